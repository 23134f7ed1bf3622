#!/usr/bin/env python
"""Cost of the feature term: one training step of feature KD over one step of logit KD, live teacher, on the MNIST
MLPs (batch 64, one thread). Interleaved repeats, one ratio per round, and their median: the target is <= 1.25.

    python benchmarks/bench_features.py --rounds 7 --steps 60 --feature_loss hint
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from hf_kd import DistillationConfig, DistillationTrainer
from hf_kd.data import InMemoryDataset
from hf_kd.models import model_from_preset


def trainer(feature_loss: str | None, steps: int, batch: int, output_dir: str) -> DistillationTrainer:
    torch.manual_seed(0)
    teacher, student = model_from_preset("mnist-mlp-teacher"), model_from_preset("mnist-mlp-student")
    g = torch.Generator().manual_seed(0)
    data = InMemoryDataset({"pixel_values": torch.randn(steps * batch, 1, 28, 28, generator=g),
                            "labels": torch.randint(0, 10, (steps * batch,), generator=g)})  # fmt: skip
    features = {"feature_pairs": ["auto"], "feature_loss": feature_loss} if feature_loss else {}
    args = DistillationConfig(
        output_dir=output_dir, per_device_train_batch_size=batch, max_steps=steps, save_strategy="no",
        report_to="none", logging_steps=10**6, disable_tqdm=True, dataloader_pin_memory=False, use_cpu=True, **features,
    )  # fmt: skip
    return DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data)


def seconds_per_step(feature_loss: str | None, steps: int, batch: int) -> float:
    with tempfile.TemporaryDirectory() as output_dir:
        run = trainer(feature_loss, steps, batch, output_dir)
        start = time.perf_counter()
        run.train()
        return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--feature_loss", default="hint")
    options = parser.parse_args()
    torch.set_num_threads(1)
    seconds_per_step(None, 5, options.batch)  # warm-up (imports, allocator)
    ratios = []
    for round_index in range(options.rounds):
        order = [None, options.feature_loss] if round_index % 2 == 0 else [options.feature_loss, None]
        times = {loss: seconds_per_step(loss, options.steps, options.batch) for loss in order}
        ratios.append(times[options.feature_loss] / times[None])
        print(f"round {round_index}: logit KD {times[None] * 1e3:.2f} ms/step, feature KD ({options.feature_loss}) "
              f"{times[options.feature_loss] * 1e3:.2f} ms/step, ratio {ratios[-1]:.3f}", flush=True)  # fmt: skip
    print(f"median ratio feature KD / logit KD ({options.feature_loss}, MLPs, live teacher): "
          f"{statistics.median(ratios):.3f} (rounds: {', '.join(f'{r:.3f}' for r in ratios)}; target <= 1.25)")


if __name__ == "__main__":
    main()
