#!/usr/bin/env python
"""White-box distillation on real data: CE only / logit KD / KD + hint / KD + overhaul / KD + attention transfer /
KD + RKD, 3 student seeds, mean and spread of the test accuracy on the full 10,000-image test split. Fashion-MNIST
with hf_kd's reference CNNs (1-channel 28x28 versions of the CIFAR-10 presets), or MNIST with the reference MLPs
(`--dataset mnist`; attention transfer needs spatial maps, so it has no MLP row).

Sized for a shared 2-core CPU (the teacher's forward is ~10 ms an image there): one teacher (seed 0) trained on a
training subset, every student on the same subset for a few epochs. Pairs are `auto` (relative depth over the
pre-ReLU outputs; attention transfer keeps the conv pairs, RKD the penultimate features); weights are the reference
implementations' defaults (`hf_kd.features.table`), not tuned.

    python studies/white_box.py --train_examples 2000 --epochs 2 --teacher_epochs 3 --output_dir /tmp/white_box
    python studies/white_box.py --dataset mnist --output_dir /tmp/white_box_mnist

`results.json` in the output directory is rewritten after every run (a stopped study keeps what it measured).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from datasets import load_dataset
from transformers import AutoModelForImageClassification, Trainer, TrainingArguments

from hf_kd import DistillationConfig, DistillationTrainer
from hf_kd.data import InMemoryDataset, collate_batches
from hf_kd.models import model_from_preset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = {  # name -> parquet files, training-set mean and std, teacher and student presets with their options
    "fashion_mnist": (
        {"train": SHARED / "fashion_mnist" / "train.parquet", "test": SHARED / "fashion_mnist" / "test.parquet"},
        (0.2860, 0.3530), ("cifar10-cnn-teacher", "cifar10-cnn-student"), {"num_channels": 1, "image_size": 28},
    ),
    "mnist": (
        {"train": SHARED / "mnist" / "mnist" / "train-00000-of-00001.parquet",
         "test": SHARED / "mnist" / "mnist" / "test-00000-of-00001.parquet"},
        (0.1307, 0.3081), ("mnist-mlp-teacher", "mnist-mlp-student"), {},
    ),
}  # fmt: skip
METHODS = {  # name -> DistillationConfig overrides
    "CE only": {"alpha": 0.0},
    "logit KD": {},
    "KD + hint": {"feature_pairs": ["auto"], "feature_loss": "hint"},
    "KD + overhaul": {"feature_pairs": ["auto"], "feature_loss": "overhaul"},
    "KD + attention transfer": {"feature_pairs": ["auto"], "feature_loss": "attention"},
    "KD + RKD": {"feature_pairs": ["auto"], "feature_loss": "rkd"},
}


def load_split(dataset: str, split: str, count: int | None, seed: int = 0) -> InMemoryDataset:
    files, (mean, std) = DATASETS[dataset][:2]
    data = load_dataset("parquet", data_files=str(files[split]), split="train")
    if count is not None:
        data = data.shuffle(seed=seed).select(range(count))
    pixels = np.stack([np.asarray(image, dtype=np.float32) for image in data["image"]]) / 255.0
    pixels = torch.from_numpy((pixels - mean) / std).unsqueeze(1)
    return InMemoryDataset({"pixel_values": pixels, "labels": torch.tensor(data["label"])})


def accuracy(model, data: InMemoryDataset) -> float:
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(pixel_values=data.columns["pixel_values"][i : i + 1000]).logits
                            for i in range(0, len(data), 1000)])  # fmt: skip
    return (logits.argmax(-1) == data.columns["labels"]).float().mean().item()


def common_args(output_dir: str, seed: int, epochs: int) -> dict:
    return dict(
        output_dir=output_dir, num_train_epochs=epochs, per_device_train_batch_size=64, learning_rate=1e-3,
        lr_scheduler_type="constant", save_strategy="no", report_to="none", logging_steps=20, seed=seed,
        disable_tqdm=True, dataloader_pin_memory=False, use_cpu=True,
    )  # fmt: skip


def train_teacher(dataset: str, train, epochs: int, output_dir: str):
    """The teacher (seed 0), saved in `output_dir`; one saved there by an earlier run of the same settings is loaded
    instead (`--output_dir` of that run, `/teacher`)."""
    (teacher_preset, _), options = DATASETS[dataset][2:]
    if (Path(output_dir) / "config.json").is_file():
        return AutoModelForImageClassification.from_pretrained(output_dir).eval()
    torch.manual_seed(0)
    teacher = model_from_preset(teacher_preset, **options)
    args = TrainingArguments(**common_args(output_dir, 0, epochs), remove_unused_columns=False)
    Trainer(model=teacher, args=args, train_dataset=train, data_collator=collate_batches).train()
    teacher.save_pretrained(output_dir)
    return teacher.eval()


def distil(dataset: str, method: str, teacher, train, seed: int, epochs: int, output_dir: str, weight=None,
           connector=None):
    (_, student_preset), options = DATASETS[dataset][2:]
    torch.manual_seed(seed)
    student = model_from_preset(student_preset, **options)
    settings = {"temperature": 4.0, "alpha": 0.5, **METHODS[method]}
    if weight is not None and "feature_pairs" in settings:
        settings["feature_weight"] = weight
    if connector is not None and "feature_pairs" in settings:
        settings["feature_connector"] = connector
    args = DistillationConfig(**common_args(output_dir, seed, epochs), **settings)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=train)
    trainer.train()
    return student, trainer.state.log_history


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=list(DATASETS), default="fashion_mnist")
    parser.add_argument("--train_examples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--teacher_epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument(
        "--feature_weight", type=float, default=None,
        help="the feature term's weight for every white-box method (default: each loss's reference weight)",
    )
    parser.add_argument("--feature_connector", default=None, help="for every white-box method (default: 'auto')")
    parser.add_argument("--output_dir", default="/tmp/hf_kd_white_box")
    parser.add_argument(
        "--teacher_dir", default=None,
        help="where the teacher is saved, or loaded from when an earlier run saved it (default: <output_dir>/teacher)",
    )
    options = parser.parse_args()
    torch.set_num_threads(1)
    train = load_split(options.dataset, "train", options.train_examples)
    test = load_split(options.dataset, "test", None)
    start = time.time()
    teacher_dir = options.teacher_dir or f"{options.output_dir}/teacher"
    loaded = (Path(teacher_dir) / "config.json").is_file()
    teacher = train_teacher(options.dataset, train, options.teacher_epochs, teacher_dir)
    results = {"dataset": options.dataset, "options": vars(options), "teacher": accuracy(teacher, test),
               "teacher_seconds": time.time() - start, "methods": {}}  # fmt: skip
    print(f"teacher: {results['teacher']:.4f} ({results['teacher_seconds']:.0f} s)", flush=True)
    Path(options.output_dir).mkdir(parents=True, exist_ok=True)
    methods = [m for m in options.methods if not (options.dataset == "mnist" and "attention" in m)]
    for method in methods:
        for seed in options.seeds:
            start = time.time()
            student, history = distil(
                options.dataset, method, teacher, train, seed, options.epochs, f"{options.output_dir}/s",
                options.feature_weight, options.feature_connector,
            )
            feature = [e["loss_feature"] for e in history if "loss_feature" in e]
            run = {"seed": seed, "accuracy": accuracy(student, test), "seconds": time.time() - start,
                   "loss_feature_first_last": feature[:1] + feature[-1:]}  # fmt: skip
            results["methods"].setdefault(method, []).append(run)
            print(method, json.dumps(run), flush=True)
            (Path(options.output_dir) / "results.json").write_text(json.dumps(results, indent=1))
    trained = f"loaded from {teacher_dir}" if loaded else f"{options.teacher_epochs} epochs"
    print(f"\n{options.dataset}, {options.train_examples} training images, students {options.epochs} epochs, teacher "
          f"{trained} ({results['teacher']:.2%} test accuracy); 10,000 test images")  # fmt: skip
    print("| method | test accuracy (mean ± std over seeds) | per seed |\n|---|---|---|")
    for method, runs in results["methods"].items():
        values = [run["accuracy"] for run in runs]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {method} | {statistics.mean(values):.2%} ± {spread:.2%} | {', '.join(f'{v:.2%}' for v in values)} |")


if __name__ == "__main__":
    main()
