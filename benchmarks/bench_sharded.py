"""Memory and step time of DistillationTrainer per engine on 2 CPU processes: DDP, DeepSpeed ZeRO-2, ZeRO-3 with the
teacher sharded and with it whole (`DistillationConfig.teacher_sharding`).

Each run is a fresh `accelerate launch` of this file in worker mode: an MLP teacher (784 -> 2048 -> 2048 -> 10,
5.8M parameters, 23 MB in float32) distilled live (run at every step) into the MNIST MLP student, over MNIST-shaped
generated tensors, global batch 64 (2 x 32). Per process it records the teacher's parameter bytes held there (whole
under DDP, ZeRO-2 and ZeRO-3 with `teacher_sharding="whole"`, where hf_kd gives it a stage-0 engine; about half
under ZeRO-3 with `teacher_sharding="sharded"`, its own ZeRO-3 engine), the
peak resident memory of the process (`ru_maxrss`: the Python, torch and DeepSpeed runtime included, so the teacher is
a small part of it here), and the median training-step time. The engines alternate, `--repeats` times each; the
ratio of each engine's median step time to DDP's is printed.

    pip install -e ".[deepspeed]"
    python benchmarks/bench_sharded.py [--repeats 2] [--steps 60]

On this CPU the numbers say what sharding costs in communication (ZeRO-3 all-gathers every layer of both models
at every step, over gloo), not what it saves on a GPU, where the teacher's weights, not the runtime, fill the memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PER_DEVICE_BATCH = 32
ENGINES = {
    "ddp": ["--multi_gpu", "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no"],
    "zero2": ["--use_deepspeed", "--zero_stage", "2", "--num_processes", "2", "--mixed_precision", "no"],
    "zero3": ["--use_deepspeed", "--zero_stage", "3", "--zero3_init_flag", "true", "--num_processes", "2",
              "--mixed_precision", "no"],
}  # fmt: skip
ENGINES["zero3-teacher-whole"] = ENGINES["zero3"]
TEACHER_SHARDING = {"zero3": "sharded", "zero3-teacher-whole": "whole"}  # the others: "auto" (whole)


def worker(steps: int, output: str, teacher_sharding: str) -> None:
    import torch
    from transformers import TrainerCallback
    from transformers.utils import logging as hf_logging

    from hf_kd import DistillationConfig, DistillationTrainer, InMemoryDataset, model_from_preset
    from hf_kd.models import MLPConfig, MLPForImageClassification

    class StepTimes(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)

    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    times: list[float] = []
    g = torch.Generator().manual_seed(0)
    n = steps * PER_DEVICE_BATCH * 2
    data = InMemoryDataset({"pixel_values": torch.randn(n, 1, 28, 28, generator=g),
                            "labels": torch.randint(0, 10, (n,), generator=g)})  # fmt: skip
    args = DistillationConfig(
        output_dir=tempfile.mkdtemp(), use_cpu=True, per_device_train_batch_size=PER_DEVICE_BATCH, num_train_epochs=1,
        save_strategy="no", report_to="none", logging_steps=1000, disable_tqdm=True, dataloader_pin_memory=False,
        seed=0, remove_unused_columns=False, teacher_sharding=teacher_sharding,
    )  # fmt: skip
    # Built after the arguments: under ZeRO-3 `from_config` partitions the models as they are created (a whole
    # teacher is gathered back by the trainer).
    teacher = MLPForImageClassification._from_config(MLPConfig(hidden_sizes=[2048, 2048]))
    trainer = DistillationTrainer(model=model_from_preset("mnist-mlp-student"), teacher_model=teacher, args=args,
                                  train_dataset=data, callbacks=[StepTimes()])  # fmt: skip
    held = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in trainer.teacher_model.parameters())
    trainer.train()
    result = {
        "rank": trainer.args.process_index,
        "teacher_mb_held": held * 4 / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "step_s": statistics.median(times[5:]),  # the first steps pay one-time costs
    }
    Path(f"{output}.rank{result['rank']}").write_text(json.dumps(result))


def launch(engine: str, steps: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        output = os.path.join(tmp, "result")
        command = [sys.executable, "-m", "accelerate.commands.launch", *ENGINES[engine], "--num_machines", "1",
                   __file__, "--worker", "--steps", str(steps), "--output", output,
                   "--teacher_sharding", TEACHER_SHARDING.get(engine, "auto")]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(command, check=True, capture_output=True, text=True, env=env)
        return [json.loads(Path(f"{output}.rank{rank}").read_text()) for rank in range(2)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--teacher_sharding", default="auto", help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.worker:
        return worker(cli.steps, cli.output, cli.teacher_sharding)

    results = {engine: [] for engine in ENGINES}
    for repeat in range(cli.repeats):
        for engine in ENGINES if repeat % 2 == 0 else reversed(ENGINES):
            ranks = launch(engine, cli.steps)
            results[engine].append(ranks)
            print(f"repeat {repeat} {engine}: " + "; ".join(
                f"rank {r['rank']} teacher {r['teacher_mb_held']:.1f} MB, peak RSS {r['peak_rss_mb']:.0f} MB, "
                f"step {r['step_s'] * 1e3:.1f} ms" for r in ranks), flush=True)  # fmt: skip
    print(f"\nsettings: teacher MLP 784-2048-2048-10 (live), student 784-100-10, 2 CPU processes x batch "
          f"{PER_DEVICE_BATCH}, {cli.steps} steps, {os.cpu_count()} cores, {cli.repeats} repeats alternated, medians")
    ddp_step = statistics.median(r["step_s"] for runs in results["ddp"] for r in runs)
    print("| engine | teacher MB held per process | peak RSS per process (MB) | step (ms) | step / DDP step |")
    print("|---|---:|---:|---:|---:|")
    for engine, runs in results.items():
        ranks = [r for run in runs for r in run]
        step = statistics.median(r["step_s"] for r in ranks)
        print(f"| {engine} | {statistics.median(r['teacher_mb_held'] for r in ranks):.1f} | "
              f"{statistics.median(r['peak_rss_mb'] for r in ranks):.0f} | {step * 1e3:.1f} | {step / ddp_step:.2f} |")


if __name__ == "__main__":
    main()
