"""Side-by-side benchmark: DistillationTrainer against a hand-written PyTorch KD loop.

One process, the seeds' MNIST MLPs (teacher 784-400-100-10, student 784-100-10), batch 64, one epoch per run. The
variants run interleaved, `--repeats` times each, and the medians are compared:

  (a) a hand-written PyTorch KD loop over in-memory tensors (teacher run on every batch);
  (b) DistillationTrainer, live teacher;
  (c) DistillationTrainer, teacher logits precomputed once (the precompute is timed apart, and amortised over
      `--amortise_epochs` epochs);
  (d) a plain transformers Trainer training the student with cross-entropy only;
  (e) for reference, the hand-written loop of (a) training the student with cross-entropy only: d - e is the
      plain Trainer's own per-step cost, which (b) pays over (a) too.

`--models cifar10-cnn` runs the same comparison with the CIFAR-10 CNNs (~100x the compute per step) on
CIFAR-shaped generated tensors, to show how the ratios move when a step does real work.

Both sides do the same work: the same models and loss function (hf_kd.losses), the optimizer the Trainer builds
from its arguments (AdamW), a constant learning rate, gradient clipping at 1.0 (the Trainer default; the
Trainer computes the gradient norm every step for its logs anyway), the same data as tensors. The trainers
keep their features on (logging every `logging_steps`, the progress bar, callbacks); checkpoints are off for both.

Real MNIST when ../shared/data/mnist exists, MNIST-shaped generated tensors otherwise:

    python benchmarks/bench_distill.py [--repeats 7] [--max_train_samples N] [--models mnist-mlp|cifar10-cnn]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import threading
import time
from pathlib import Path

import psutil
import torch
from datasets import Dataset, Features, Array3D, Value
from transformers import Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

from hf_kd import DistillationConfig, DistillationTrainer
from hf_kd.data import InMemoryDataset, collate_batches
from hf_kd.losses import distillation_loss
from hf_kd.models import image_processor_for_preset, model_from_preset

MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
TEMPERATURE, ALPHA, BATCH, LR, MAX_GRAD_NORM = 4.0, 0.5, 64, 1e-3, 1.0


MODELS = {
    "mnist-mlp": ("mnist-mlp-teacher", "mnist-mlp-student", (1, 28, 28), "MLP teacher 784-400-100-10, student 784-100-10"),
    "cifar10-cnn": ("cifar10-cnn-teacher", "cifar10-cnn-student", (3, 32, 32), "CIFAR-10 CNN teacher 1.19M, student 0.27M params"),
}


def load_data(models: str, max_samples: int | None) -> tuple[Dataset, str]:
    """The prepared train split (pixel_values, labels) as a torch-format datasets.Dataset: real MNIST for the MLPs
    when ../shared has it, generated tensors of the models' input shape otherwise."""
    if models == "mnist-mlp" and MNIST_DIR.exists():
        from hf_kd.data import preprocess_image_dataset

        from datasets import load_dataset

        raw = load_dataset(str(MNIST_DIR), split="train")
        if max_samples:
            raw = raw.select(range(max_samples))
        prepared = preprocess_image_dataset(raw, image_processor_for_preset("mnist-mlp-student"), "image", "label")
        return prepared, f"real MNIST ({MNIST_DIR})"
    shape = MODELS[models][2]
    n = max_samples or (60000 if models == "mnist-mlp" else 50000)
    g = torch.Generator().manual_seed(0)
    features = Features({"pixel_values": Array3D(shape, "float32"), "labels": Value("int64")})
    data = {"pixel_values": torch.randn(n, *shape, generator=g).numpy(), "labels": torch.randint(0, 10, (n,), generator=g).numpy()}
    return Dataset.from_dict(data, features=features).with_format("torch"), f"generated tensors of shape {shape}"


class PeakRSS:
    """Peak resident memory above the starting point, sampled every 5 ms (CPU); CUDA's own counter on a GPU."""

    def __enter__(self):
        self.process, self.start, self.peak, self.running = psutil.Process(), psutil.Process().memory_info().rss, 0, True
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss - self.start)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.mb = (torch.cuda.max_memory_allocated() if torch.cuda.is_available() else self.peak) / 2**20


def trainer_args(output_dir: str, cls=DistillationConfig, **extra):
    return cls(
        output_dir=output_dir,
        per_device_train_batch_size=BATCH,
        num_train_epochs=1,
        learning_rate=LR,
        weight_decay=0.0,
        lr_scheduler_type="constant",
        max_grad_norm=MAX_GRAD_NORM,  # the Trainer's default; the hand-written loop clips the same way
        save_strategy="no",
        logging_steps=100,
        report_to="none",
        dataloader_pin_memory=torch.cuda.is_available(),
        seed=0,
        **extra,
    )


def hand_written_loop(x: torch.Tensor, y: torch.Tensor, device: torch.device, models: str, distil: bool = True) -> float:
    """The tutorial loop: shuffle, index, forward, loss, backward, clip, step. With `distil=False`, CE only."""
    teacher_preset, student_preset = MODELS[models][:2]
    teacher = model_from_preset(teacher_preset).to(device).eval().requires_grad_(False)
    student = model_from_preset(student_preset).to(device).train()
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(trainer_args("unused"))
    optimizer = optimizer_cls(student.parameters(), **optimizer_kwargs)
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    order = torch.randperm(len(x), generator=g)
    for i in range(0, len(x), BATCH):
        index = order[i : i + BATCH]
        inputs, labels = x[index].to(device), y[index].to(device)
        if distil:
            with torch.no_grad():
                teacher_logits = teacher(inputs).logits
            loss = distillation_loss(student(inputs).logits, teacher_logits, labels, TEMPERATURE, ALPHA)["loss"]
        else:
            loss = student(inputs, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), MAX_GRAD_NORM)
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def timed_train(trainer) -> float:
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--amortise_epochs", type=int, default=5)
    parser.add_argument("--output_dir", default="/tmp/hf_kd_bench")
    parser.add_argument("--models", choices=list(MODELS), default="mnist-mlp")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads for every variant (1, as the MNIST example: the MLPs gain nothing from more, "
        "and on a shared machine threads waiting on each other dominate the timings).",
    )
    cli = parser.parse_args()
    torch.set_num_threads(cli.threads)
    hf_logging.set_verbosity_error()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    prepared, source = load_data(cli.models, cli.max_train_samples)
    teacher_preset, student_preset, _, description = MODELS[cli.models]
    tensors = InMemoryDataset.from_dataset(prepared, ["pixel_values", "labels"])
    x, y = tensors.columns["pixel_values"], tensors.columns["labels"]

    def run_a():
        return hand_written_loop(x, y, device, cli.models), 0.0

    def run_e():
        return hand_written_loop(x, y, device, cli.models, distil=False), 0.0

    def run_b():
        trainer = DistillationTrainer(model=model_from_preset(student_preset),
                                      teacher_model=model_from_preset(teacher_preset),
                                      args=trainer_args(cli.output_dir, temperature=TEMPERATURE, alpha=ALPHA),
                                      train_dataset=tensors)
        return timed_train(trainer), 0.0

    def run_c():
        # The trainer's own switch: it runs the teacher once over the in-memory tensors (no cache file, so the teacher
        # really runs here, every repeat), timed apart from training.
        start = time.perf_counter()
        trainer = DistillationTrainer(model=model_from_preset(student_preset),
                                      teacher_model=model_from_preset(teacher_preset),
                                      args=trainer_args(cli.output_dir, temperature=TEMPERATURE, alpha=ALPHA,
                                                        precompute_teacher_logits=True, teacher_batch_size=1024),
                                      train_dataset=tensors)
        precompute = time.perf_counter() - start
        return timed_train(trainer), precompute

    def run_d():
        trainer = Trainer(model=model_from_preset(student_preset),
                          args=trainer_args(cli.output_dir, cls=TrainingArguments, remove_unused_columns=False),
                          train_dataset=tensors,
                          data_collator=collate_batches)
        return timed_train(trainer), 0.0

    variants = {"a": run_a, "b": run_b, "c": run_c, "d": run_d, "e": run_e}
    times = {name: [] for name in variants}
    precomputes, memory = [], {name: [] for name in variants}
    for repeat in range(cli.repeats):
        order = list(variants)[repeat % len(variants) :] + list(variants)[: repeat % len(variants)]  # rotate: no variant always goes first
        for name in order:
            gc.collect()
            with PeakRSS() as peak:
                seconds, precompute = variants[name]()
            times[name].append(seconds)
            memory[name].append(peak.mb)
            if name == "c":
                precomputes.append(precompute)
            print(f"repeat {repeat} {name}: {seconds:.2f} s" + (f" (+ precompute {precompute:.2f} s)" if name == "c" else ""), flush=True)

    med = {name: statistics.median(values) for name, values in times.items()}
    pre = statistics.median(precomputes)
    c_amortised = med["c"] + pre / cli.amortise_epochs
    labels = {
        "a": "hand-written PyTorch KD loop (tensors)",
        "b": "DistillationTrainer, live teacher",
        "c": "DistillationTrainer, precomputed logits",
        "d": "plain Trainer, student CE only",
        "e": "hand-written loop, student CE only",
    }
    print()
    print(f"data: {source}, {len(x)} examples; device: {device}; torch {torch.__version__}; threads {torch.get_num_threads()}")
    print(f"settings: {description}, batch {BATCH}, 1 epoch, AdamW lr {LR} constant, "
          f"clipping at {MAX_GRAD_NORM}, T={TEMPERATURE}, alpha={ALPHA}, {cli.repeats} repeats interleaved, medians")
    for name in variants:
        spread = f"{min(times[name]):.2f}-{max(times[name]):.2f}"
        print(f"({name}) {labels[name]:<42} {med[name]:6.2f} s/epoch  [{spread}]  peak mem +{max(memory[name]):.0f} MB")
    print(f"    precompute of teacher logits (once, with building the trainer): {pre:.2f} s; (c) amortised over {cli.amortise_epochs} epochs: "
          f"{c_amortised:.2f} s/epoch")
    # Per-round ratios too: a shared machine's speed drifts over minutes, and the variants of one round run within
    # seconds of each other, so their ratio is steadier than the ratio of medians taken across rounds.
    amortised = [c + p / cli.amortise_epochs for c, p in zip(times["c"], precomputes)]
    ratios = {
        "b/a": ([b / a for b, a in zip(times["b"], times["a"])], med["b"] / med["a"], "target <= 1.15"),
        "c/a": ([c / a for c, a in zip(amortised, times["a"])], c_amortised / med["a"],
                f"precompute amortised over {cli.amortise_epochs} epochs; target <= 0.85"),
        "c/d": ([c / d for c, d in zip(times["c"], times["d"])], med["c"] / med["d"], "target <= 1.10"),
    }
    for name, (per_round, of_medians, note) in ratios.items():
        print(f"ratio {name} = {of_medians:.2f}   per round: median {statistics.median(per_round):.2f} "
              f"[{min(per_round):.2f}-{max(per_round):.2f}]   ({note})")
    steps = -(-len(x) // BATCH)
    print(f"context: the plain Trainer's own per-step cost d - e = {(med['d'] - med['e']) / steps * 1e3:.2f} ms/step; "
          f"b - a = {(med['b'] - med['a']) / steps * 1e3:.2f} ms/step; a step of (a) takes {med['a'] / steps * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
