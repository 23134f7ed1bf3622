#!/usr/bin/env python
"""Online and self distillation on real MNIST and Fashion-MNIST, against the CE-only baseline with the same epochs.

For each dataset and seed, with hf_kd's MNIST MLPs (teacher 784-400-100-10, student 784-100-10), every model trained
for the same epochs on the same training subset and scored on the full 10,000-image test split:

- independent: the student on the labels alone (the CE-only baseline), and the teacher on the labels alone;
- mutual, student-student: two students trained together (deep mutual learning; peer 0 starts from the baseline's
  weights, peer 1 from seed + 1);
- mutual, teacher-student: a teacher and a student trained together (each starts from its independent twin's weights);
- born-again generations 1-3: each a fresh student (the baseline's initial weights) distilled from the previous
  generation, generation 0 being the baseline;
- EMA self-distillation: the student distilled from an exponential moving average of itself.

All through the library's stages (`hf_kd.runs.experiment`, `hf_kd.runs.online`). Mean and spread (sample standard deviation)
over the seeds; a table in Markdown at the end (and in `--output_dir/online_self.json`).

    . ../shared/offline-hf.sh; python studies/online_self.py --train_examples 10000 --epochs 10
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from harness import Study
from hf_kd import DistillationConfig
from hf_kd.runs.arguments import DataArguments
from hf_kd.runs.experiment import TEACHER_DIR, train_baseline, train_with_labels
from hf_kd.runs.online import born_again, distil_from_ema, train_mutual
from hf_kd.runs.recipes import build_image_model, image_processor_for, load_image_data

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = {"MNIST": DATA_DIR / "mnist", "Fashion-MNIST": DATA_DIR / "fashion_mnist"}
TEACHER, STUDENT = "mnist-mlp-teacher", "mnist-mlp-student"
ROWS = [
    "student, CE only (baseline)", "teacher, CE only",
    "mutual student-student: peer 0", "mutual student-student: peer 1",
    "mutual teacher-student: student", "mutual teacher-student: teacher",
    "born-again generation 1", "born-again generation 2", "born-again generation 3",
    "EMA self-distillation",
]  # fmt: skip


def accuracy(model, data) -> float:
    model.eval()
    pixels, labels = data.eval_dataset.columns["pixel_values"], data.eval_dataset.columns["labels"]
    with torch.no_grad():
        logits = torch.cat([model(pixel_values=pixels[i : i + 2000]).logits for i in range(0, len(labels), 2000)])
    return (logits.argmax(-1) == labels).float().mean().item()


def one_seed(data, names, seed: int, args, output_dir: Path) -> dict[str, float]:
    config = DistillationConfig(
        output_dir=str(output_dir), seed=seed, num_train_epochs=args.epochs, learning_rate=1e-3,
        per_device_train_batch_size=128, per_device_eval_batch_size=1024, temperature=4.0, alpha=0.5,
        precompute_teacher_logits=True, save_strategy="no", eval_strategy="no", logging_steps=10**6,
        report_to="none", disable_tqdm=True, dataloader_pin_memory=False,
    )  # fmt: skip
    mutual_config = copy.deepcopy(config)
    mutual_config.temperature = args.mutual_temperature

    def build(architecture, offset=0):
        return build_image_model(architecture, names, seed + offset)

    baseline = train_baseline(build(STUDENT), data, config, None)
    teacher = train_with_labels(TEACHER_DIR, build(TEACHER), data, config, None)
    same = train_mutual([build(STUDENT), build(STUDENT, 1)], data, mutual_config, None, name="mutual_ss")
    mixed = train_mutual([build(STUDENT), build(TEACHER)], data, mutual_config, None, name="mutual_ts")
    generations = born_again(baseline, lambda: build(STUDENT), data, config, None, generations=3)
    ema = distil_from_ema(build(STUDENT), data, config, None, decay=args.ema_decay)
    models = [baseline, teacher, *same, *mixed, *generations, ema]
    return {row: accuracy(run.model, data) for row, run in zip(ROWS, models)}


def table(results: dict[str, dict[str, list[float]]]) -> str:
    names = list(results)
    lines = ["| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for row in ROWS:
        cells = []
        for name in names:
            values, base = results[name][row], results[name][ROWS[0]]
            mean, spread = 100 * statistics.mean(values), 100 * statistics.stdev(values) if len(values) > 1 else 0.0
            gain = 100 * statistics.mean(v - b for v, b in zip(values, base))
            cells.append(f"{mean:.2f} ± {spread:.2f}" + ("" if row == ROWS[0] else f" ({gain:+.2f})"))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train_examples", type=int, default=10000, help="first N training images (default 10000)")
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--mutual_temperature", type=float, default=1.0, help="DML's T (the paper: 1)")
    parser.add_argument("--ema_decay", type=float, default=0.99)
    parser.add_argument("--output_dir", default=None, help="default: a temporary directory")
    args = parser.parse_args()
    torch.set_num_threads(1)
    output_dir = Path(args.output_dir or tempfile.mkdtemp(prefix="online_self-"))
    results, start = {}, time.time()
    for name in args.datasets:
        data_args = DataArguments(dataset_name=str(DATASETS[name]), max_train_samples=args.train_examples)
        data, names = load_image_data(data_args, image_processor_for(STUDENT))
        scores = [one_seed(data, names, seed, args, output_dir / name / f"seed{seed}") for seed in args.seeds]
        results[name] = {row: [score[row] for score in scores] for row in ROWS}
        # The harness's table: paired SE against the CE-only student of the same seed, and its verdict.
        sizes = {"train": args.train_examples, "test": 10000}
        study = Study(f"Online and self distillation, {name}", ROWS[0], args.seeds, sizes, output_dir,
                      stem=f"online_self_{name}")  # fmt: skip
        for row in ROWS:
            for seed, score in zip(args.seeds, results[name][row]):
                study.record(row, seed, score)
        print((output_dir / f"online_self_{name}.md").read_text(), flush=True)
        print(f"{name} done after {time.time() - start:.0f} s", flush=True)
    print(f"\nTest accuracy (%), mean ± standard deviation over seeds {args.seeds}, (mean paired difference to the "
          f"baseline); {args.train_examples} training images, {args.epochs:g} epochs, full test split; "
          f"{time.time() - start:.0f} s in all.\n")  # fmt: skip
    print(table(results))
    (output_dir / "online_self.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
