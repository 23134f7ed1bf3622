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
    python studies/white_box.py --choose_weight --output_dir /tmp/white_box_chosen   # weights chosen on validation

Built on studies/harness.py: every method's student for a seed starts from the same weights and data order, the
white-box rows are paired against logit KD (the term is added to it), and `--choose_weight` picks each feature
term's weight (the reference weight x 1, 0.1 or 0.01) on `--validation_examples` training images held out from the
training subset, never on the test split. `results.md` / `results.json` in the output directory are rewritten after
every run (a stopped study keeps what it measured).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from datasets import load_dataset
from transformers import AutoModelForImageClassification, Trainer, TrainingArguments

from hf_kd import DistillationConfig, DistillationTrainer
from hf_kd.data import InMemoryDataset, collate_batches
from harness import SHARED_DATA as SHARED
from harness import Study, choose_on_validation, seeded, weights_fingerprint
from hf_kd.features.table import feature_loss
from hf_kd.models import model_from_preset

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


def load_split(dataset: str, split: str, count: int | None, seed: int = 0, skip: int = 0) -> InMemoryDataset:
    """`count` images of the split after a shuffle with `seed`, from position `skip` on (the validation images are
    the ones after the training subset: they never overlap it and leave it unchanged), or the whole split."""
    files, (mean, std) = DATASETS[dataset][:2]
    data = load_dataset("parquet", data_files=str(files[split]), split="train")
    if count is not None:
        data = data.shuffle(seed=seed).select(range(skip, skip + count))
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
    student = seeded(seed, lambda: model_from_preset(student_preset, **options))
    start = weights_fingerprint(student)
    settings = {"temperature": 4.0, "alpha": 0.5, **METHODS[method]}
    if weight is not None and "feature_pairs" in settings:
        settings["feature_weight"] = weight
    if connector is not None and "feature_pairs" in settings:
        settings["feature_connector"] = connector
    args = DistillationConfig(**common_args(output_dir, seed, epochs), **settings)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=train)
    trainer.train()
    return student, trainer.state.log_history, start


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
    parser.add_argument(
        "--choose_weight", action="store_true",
        help="choose each feature term's weight (reference x 1, 0.1, 0.01) on the validation images (seed 0)",
    )
    parser.add_argument("--validation_examples", type=int, default=2000, help="training images held out")
    parser.add_argument("--output_dir", default="/tmp/hf_kd_white_box")
    parser.add_argument(
        "--teacher_dir", default=None,
        help="where the teacher is saved, or loaded from when an earlier run saved it (default: <output_dir>/teacher)",
    )
    options = parser.parse_args()
    torch.set_num_threads(1)
    train = load_split(options.dataset, "train", options.train_examples)
    validation = load_split(options.dataset, "train", options.validation_examples, skip=options.train_examples)
    test = load_split(options.dataset, "test", None)
    teacher_dir = options.teacher_dir or f"{options.output_dir}/teacher"
    start = time.time()
    teacher = train_teacher(options.dataset, train, options.teacher_epochs, teacher_dir)
    sizes = {"train": len(train), "validation": len(validation), "test": len(test)}
    study = Study(f"White-box distillation, {options.dataset}", "logit KD", options.seeds, sizes, options.output_dir)
    study.notes["teacher"] = f"{accuracy(teacher, test):.2%} test accuracy ({teacher_dir}, {time.time() - start:.0f} s)"
    methods = [m for m in options.methods if not (options.dataset == "mnist" and "attention" in m)]
    for method in methods:
        weight = options.feature_weight
        if options.choose_weight and "feature_loss" in METHODS[method]:
            weight = choose_weight(options, method, teacher, train, validation, study)
        for seed in options.seeds:
            begun = time.time()
            student, history, initial = distil(
                options.dataset, method, teacher, train, seed, options.epochs, f"{options.output_dir}/s", weight,
                options.feature_connector,
            )
            feature = [e["loss_feature"] for e in history if "loss_feature" in e]
            study.record(method, seed, accuracy(student, test), start=initial, seconds=round(time.time() - begun),
                         feature_weight=weight, loss_feature_first_last=feature[:1] + feature[-1:])  # fmt: skip
            print(method, seed, study.runs[method][seed]["score"], flush=True)
    print(f"\n{(Path(options.output_dir) / 'results.md').read_text()}")


def choose_weight(options, method: str, teacher, train, validation, study: Study) -> float:
    """The feature weight (reference x 1, 0.1, 0.01) whose seed-0 student scores best on the validation images."""
    reference = feature_loss(METHODS[method]["feature_loss"]).default_weight
    candidates = [{"weight": reference * factor} for factor in (1.0, 0.1, 0.01)]

    def validation_score(candidate):
        student = distil(options.dataset, method, teacher, train, 0, options.epochs, f"{options.output_dir}/s",
                         candidate["weight"], options.feature_connector)[0]  # fmt: skip
        return accuracy(student, validation)

    best, tried = choose_on_validation(candidates, validation_score)
    study.notes[f"{method}: weight on validation"] = [[c["weight"], score] for c, score in tried]
    return best["weight"]


if __name__ == "__main__":
    main()
