"""Throughput of DistillationTrainer with 2 processes against 1, on the CPU (gloo), side by side.

Each run is a fresh `accelerate launch` of this file in worker mode: the seeds' MNIST MLPs distilled for one epoch
over MNIST-shaped generated tensors, with the same global batch (1 process x 128, or 2 processes x 64). The runs
alternate, `--repeats` times each, and the ratio of median throughputs (examples per second) is printed.

    python benchmarks/bench_multiprocess.py [--repeats 3] [--num_examples 30000]

Every process runs one intra-op thread (accelerate's default on the CPU, OMP_NUM_THREADS=1): the single process uses
one core, the two processes one core each, so the ratio says what data parallelism buys per added process on this
machine, the gradient all-reduce over gloo included. (With the reference MLPs a step is ~1 ms of compute, so the
all-reduce of 80k gradients at every step weighs heavily; larger models amortise it.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

GLOBAL_BATCH = 128


def worker(num_examples: int, output: str) -> None:
    import torch
    from datasets import Array3D, Dataset, Features, Value
    from transformers.utils import logging as hf_logging

    from hf_kd import DistillationConfig, DistillationTrainer, InMemoryDataset, model_from_preset

    hf_logging.set_verbosity_error()
    g = torch.Generator().manual_seed(0)
    features = Features({"pixel_values": Array3D((1, 28, 28), "float32"), "labels": Value("int64")})
    data = Dataset.from_dict(
        {"pixel_values": torch.randn(num_examples, 1, 28, 28, generator=g).numpy(),
         "labels": torch.randint(0, 10, (num_examples,), generator=g).numpy()},
        features=features,
    )
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    args = DistillationConfig(
        output_dir=tempfile.mkdtemp(), use_cpu=True, per_device_train_batch_size=GLOBAL_BATCH // world_size,
        num_train_epochs=1, save_strategy="no", report_to="none", logging_steps=100, disable_tqdm=True,
        dataloader_pin_memory=False, seed=0,
    )
    trainer = DistillationTrainer(model=model_from_preset("mnist-mlp-student"),
                                  teacher_model=model_from_preset("mnist-mlp-teacher"), args=args,
                                  train_dataset=InMemoryDataset.from_dataset(data))
    metrics = trainer.train().metrics
    if trainer.is_world_process_zero():
        Path(output).write_text(json.dumps({"world_size": trainer.args.world_size,
                                            "examples_per_second": metrics["train_samples_per_second"],
                                            "threads": torch.get_num_threads()}))


def launch(num_processes: int, num_examples: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        output = os.path.join(tmp, "result.json")
        launcher = ["--multi_gpu", "--num_processes", "2"] if num_processes == 2 else ["--num_processes", "1"]
        command = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--mixed_precision", "no",
                   "--dynamo_backend", "no", "--num_machines", "1", __file__, "--worker",
                   "--num_examples", str(num_examples), "--output", output]
        subprocess.run(command, check=True, capture_output=True, text=True)
        return json.loads(Path(output).read_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num_examples", type=int, default=30000)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.worker:
        return worker(cli.num_examples, cli.output)

    results = {1: [], 2: []}
    for repeat in range(cli.repeats):
        for n in ((1, 2) if repeat % 2 == 0 else (2, 1)):
            result = launch(n, cli.num_examples)
            assert result["world_size"] == n, result
            results[n].append(result["examples_per_second"])
            print(f"repeat {repeat}: {n} process(es), {result['threads']} thread(s) each: "
                  f"{result['examples_per_second']:.0f} examples/s", flush=True)
    one, two = statistics.median(results[1]), statistics.median(results[2])
    print(f"\nsettings: MNIST MLPs (teacher live), {cli.num_examples} generated examples, global batch {GLOBAL_BATCH}, "
          f"1 epoch, CPU, {os.cpu_count()} cores, {cli.repeats} repeats alternated, medians")
    print(f"1 process : {one:8.0f} examples/s")
    print(f"2 processes: {two:8.0f} examples/s")
    print(f"ratio 2-process / 1-process throughput = {two / one:.2f}")


if __name__ == "__main__":
    main()
