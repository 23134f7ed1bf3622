"""Where a `transformers.Trainer` step spends its time beyond the model's own work, measured by ablation.

The same student (the seeds' MNIST MLP, batch 64, one epoch, AdamW, clipping at 1.0, 1 thread) is trained CE-only by
a hand-written loop and by a plain `Trainer`, then by the `Trainer` with one per-step cost of transformers or
accelerate removed at a time, all in one process, interleaved, medians of `--repeats`. The removals are test-only
patches of upstream functions (never applied by hf_kd): they show how much of the gap each one explains, and what an
upstream fix would buy.

    python benchmarks/bench_trainer_overhead.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import functools
import statistics
from contextlib import ExitStack, contextmanager
from unittest import mock

import torch
from bench_distill import BATCH, hand_written_loop, load_data, timed_train, trainer_args
from transformers import Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

from hf_kd.data import InMemoryDataset, collate_batches
from hf_kd.models import model_from_preset


@contextmanager
def cached(target: str):
    """Replace the function at `target` with a cached copy of itself (its answer does not change during a run)."""
    module_name, name = target.rsplit(".", 1)
    module = __import__(module_name, fromlist=[name])
    with mock.patch.object(module, name, functools.lru_cache(maxsize=None)(getattr(module, name))):
        yield


@contextmanager
def cached_parameter_count():
    """`Trainer.floating_point_ops` with the parameter count computed once (what DistillationTrainer does)."""
    counts = {}

    def floating_point_ops(self, inputs):
        model = self.model
        if model not in counts:
            counts[model] = model.num_parameters(exclude_embeddings=True)
        return 6 * inputs[model.main_input_name].numel() * counts[model]

    with mock.patch.object(Trainer, "floating_point_ops", floating_point_ops):
        yield


ABLATIONS = {
    "plain Trainer": ([], {}),
    "- is_lomo_available per optimizer step (accelerate)": (["accelerate.optimizer.is_lomo_available"], {}),
    "- is_sagemaker_mp_enabled per clip (transformers)": (["transformers.trainer.is_sagemaker_mp_enabled"], {}),
    "- parameter walk in floating_point_ops (transformers)": (["flops"], {}),
    "- progress bar (disable_tqdm=True)": ([], {"disable_tqdm": True}),
    "- all of the above": (
        ["accelerate.optimizer.is_lomo_available", "transformers.trainer.is_sagemaker_mp_enabled", "flops"],
        {"disable_tqdm": True},
    ),
}


def run_trainer(dataset, patches: list[str], extra: dict) -> float:
    trainer = Trainer(
        model=model_from_preset("mnist-mlp-student"),
        args=trainer_args("/tmp/hf_kd_bench_overhead", cls=TrainingArguments, remove_unused_columns=False, **extra),
        train_dataset=dataset,
        data_collator=collate_batches,
    )
    with ExitStack() as stack:
        for target in patches:
            stack.enter_context(cached_parameter_count() if target == "flops" else cached(target))
        return timed_train(trainer)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--max_train_samples", type=int, default=None)
    cli = parser.parse_args()
    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()
    prepared, source = load_data("mnist-mlp", cli.max_train_samples)
    tensors = InMemoryDataset.from_dataset(prepared, ["pixel_values", "labels"])
    x, y = tensors.columns["pixel_values"], tensors.columns["labels"]

    times = {"hand-written CE loop": []} | {name: [] for name in ABLATIONS}
    for repeat in range(cli.repeats):
        times["hand-written CE loop"].append(hand_written_loop(x, y, torch.device("cpu"), "mnist-mlp", distil=False))
        names = list(ABLATIONS)
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:  # rotate: none always goes first
            times[name].append(run_trainer(tensors, *ABLATIONS[name]))
    med = {name: statistics.median(values) for name, values in times.items()}
    hand = med["hand-written CE loop"]
    print(f"\ndata: {source}, {len(x)} examples; 1 thread; batch {BATCH}; 1 epoch; medians of {cli.repeats}")
    print("'saves': the median over rounds of (plain Trainer - variant) within one round, steadier than a difference")
    print("of medians when the machine's speed drifts.")
    print(f"{'variant':<56} {'s/epoch':>8} {'vs hand':>8} {'saves':>7}")
    for name, value in med.items():
        saves = ""
        if name not in ("hand-written CE loop", "plain Trainer"):
            saves = f"{statistics.median(p - v for p, v in zip(times['plain Trainer'], times[name])):+.2f}"
        print(f"{name:<56} {value:8.2f} {value / hand:8.2f} {saves:>7}")
    per_round = [p - h for p, h in zip(times["plain Trainer"], times["hand-written CE loop"])]
    print(f"Trainer overhead over the hand-written loop: {statistics.median(per_round):.2f} s/epoch "
          f"({statistics.median(per_round) / (len(x) / BATCH) * 1e3:.2f} ms/step), per-round median")


if __name__ == "__main__":
    main()
