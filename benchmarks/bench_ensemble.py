"""Benchmark: distilling an ensemble of teachers with precomputed pseudo-logits costs what one teacher does.

Once the ensemble's pseudo-logits are a `teacher_logits` column (computed once by `add_teacher_logits`, the one
precompute path), a training step reads one tensor per batch whatever the number of teachers: the training time
should equal single-teacher precomputed training (target: ratio <= 1.05). The precompute itself runs every teacher
once over the data and is timed apart.

The seeds' MNIST MLPs (teachers 784-400-100-10 of three seeds, student 784-100-10), batch 64, one epoch a run, the
two variants interleaved `--repeats` times (alternating which runs first, after an untimed warm-up); the median of
the paired ratios is the result. Helpers from `bench_distill.py`.

    python benchmarks/bench_ensemble.py [--repeats 5] [--max_train_samples 20000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_distill import image_pair, timed_train, trainer_args
from transformers.utils import logging as hf_logging

from hf_kd import DistillationTrainer, add_teacher_logits
from hf_kd.models import model_from_preset
from hf_kd.teacher.ensemble import TeacherEnsemble


def teachers(k: int) -> list:
    out = []
    for seed in range(k):
        torch.manual_seed(seed)
        out.append(model_from_preset("mnist-mlp-teacher").eval())
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max_train_samples", type=int, default=20000)
    parser.add_argument("--teachers", type=int, default=3)
    parser.add_argument("--output_dir", default="/tmp/hf_kd_bench_ensemble")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()
    pair = image_pair("mnist-mlp", args.max_train_samples)
    data, source = pair.tensors, pair.source
    models = teachers(args.teachers)
    ensemble = TeacherEnsemble(models, method="mean_probs", temperature=4.0)

    add_teacher_logits(data, models[0], batch_size=512)  # untimed warm-up: first-call costs fall on neither
    precompute = {}
    start = time.perf_counter()
    single_data = add_teacher_logits(data, models[0], batch_size=512)
    precompute["single"] = time.perf_counter() - start
    start = time.perf_counter()
    ensemble_data = add_teacher_logits(data, ensemble, batch_size=512)
    precompute["ensemble"] = time.perf_counter() - start

    def epoch(name: str, dataset) -> float:
        torch.manual_seed(0)
        trainer = DistillationTrainer(
            model=model_from_preset("mnist-mlp-student"),
            args=trainer_args(pair, f"{args.output_dir}/{name}", disable_tqdm=True),
            train_dataset=dataset,
        )
        return timed_train(trainer)

    epoch("warm-up", single_data)  # untimed: first-call costs (allocator, kernels) would fall on one variant
    times, ratios = {"single": [], "ensemble": []}, []
    variants = [("single", single_data), ("ensemble", ensemble_data)]
    for repeat in range(args.repeats):  # interleaved, alternating which goes first: drift hits both variants
        timed = {name: epoch(name, dataset) for name, dataset in (variants if repeat % 2 == 0 else variants[::-1])}
        for name, seconds in timed.items():
            times[name].append(seconds)
        ratios.append(timed["ensemble"] / timed["single"])
    single, ensemble_time = statistics.median(times["single"]), statistics.median(times["ensemble"])
    print(f"data: {source}, {len(data)} examples; {args.teachers} teachers (mean_probs); {args.repeats} interleaved repeats")
    print(f"precompute (once, cached afterwards): single teacher {precompute['single']:.2f} s, "
          f"ensemble {precompute['ensemble']:.2f} s")  # fmt: skip
    print(f"training epoch, median: single teacher precomputed {single:.2f} s "
          f"[{min(times['single']):.2f}-{max(times['single']):.2f}], ensemble precomputed {ensemble_time:.2f} s "
          f"[{min(times['ensemble']):.2f}-{max(times['ensemble']):.2f}]")  # fmt: skip
    print(f"ratio ensemble / single: median of the {args.repeats} paired ratios {statistics.median(ratios):.3f} "
          f"[{min(ratios):.3f}-{max(ratios):.3f}], of the medians {ensemble_time / single:.3f} (target <= 1.05)")  # fmt: skip


if __name__ == "__main__":
    main()
