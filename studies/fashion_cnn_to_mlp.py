#!/usr/bin/env python
"""Fashion-MNIST, a CNN teacher distilled into an MLP student (784-100-10): a regime where the teacher knows much more
than the student learns alone. Built on studies/harness.py (validation carved from the training split, same start
and data order per seed, paired differences, gain only beyond 2 SE).

Stages (each writes `<stage>.md` / `<stage>.json` in `--output_dir`; the teachers and their logits are cached there,
so a second run reuses them):

- `full`: every label; CE only vs logit KD (temperature and alpha chosen on the validation split from a small grid),
  then, when listed in `--extras`, mutual learning of two MLPs (no teacher) and an ensemble of two CNN teachers
  (logits averaged; the second teacher is trained when first needed).
- `few_labels`: 1% / 10% of the training labels; the rest of the training images answered by the teacher
  (its logits, computed in this process): CE on the labelled images only, CE on labels + the teacher's hard answers,
  logit KD on all images.

    nice -n 19 python studies/fashion_cnn_to_mlp.py --stages full --output_dir outputs/fashion_cnn_to_mlp
    nice -n 19 python studies/fashion_cnn_to_mlp.py --stages few_labels --output_dir outputs/fashion_cnn_to_mlp

(`few_labels` reuses the setting `full` chose on validation, so it starts once `full.json` records it.)

Students train with hf_kd's DistillationTrainer on precomputed teacher logits (alpha=0 is CE only), AdamW, lr 1e-3
decayed linearly, batch 128, for `--epochs` epochs; the validation accuracy of each run is logged per epoch so the
table's JSON shows whether CE-only had converged.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from datasets import load_dataset
from PIL import Image
from transformers import AutoModelForImageClassification, Trainer, TrainerCallback, TrainingArguments

from harness import SHARED_DATA, Study, carve_validation, choose_on_validation, seeded, weights_fingerprint
from hf_kd import DistillationConfig, DistillationTrainer, MutualLearningConfig, MutualLearningTrainer
from hf_kd import add_teacher_logits, model_from_preset
from hf_kd.data import InMemoryDataset, collate_batches

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set statistics
VALIDATION = 5000
# The teacher: the CIFAR-10 student preset for 1x28x28 with 32-channel convs (conv 1->32, pool, conv 32->32, pool,
# FC 1568->128, dropout 0.25, 128->10: 211,690 parameters, 2.7x the student's 79,510), sized so that a shared 2-core
# CPU trains it in minutes; what it knows beyond the student is its convolutions, not its size.
TEACHER = {"num_channels": 1, "image_size": 28, "conv_channels": [32, 32], "classifier_hidden_sizes": [128],
           "dropout": 0.25}  # fmt: skip
GRID = [{"temperature": t, "alpha": a} for t in (2.0, 4.0, 8.0) for a in (0.5, 0.9)]


def load_split(split: str, cache: Path) -> InMemoryDataset:
    """Decoded, normalised pixels `(N, 1, 28, 28)` and labels, cached as a tensor file (decoding takes a while)."""
    path = cache / f"{split}.pt"
    if not path.is_file():
        data = load_dataset("parquet", data_files=str(SHARED_DATA / "fashion_mnist" / f"{split}.parquet"),
                            split="train")  # fmt: skip
        images = [np.asarray(Image.open(io.BytesIO(image["bytes"])), dtype=np.float32)
                  for image in data.cast_column("image", data.features["image"].__class__(decode=False))["image"]]
        pixels = (torch.from_numpy(np.stack(images)) / 255.0 - MEAN) / STD
        cache.mkdir(parents=True, exist_ok=True)
        torch.save({"pixel_values": pixels.unsqueeze(1), "labels": torch.tensor(data["label"])}, path)
    return InMemoryDataset(torch.load(path))


def subset(data: InMemoryDataset, indices: torch.Tensor) -> InMemoryDataset:
    return InMemoryDataset({name: values[indices] for name, values in data.columns.items()})


def accuracy(model, data: InMemoryDataset) -> float:
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(pixel_values=data.columns["pixel_values"][i : i + 2000]).logits
                            for i in range(0, len(data), 2000)])  # fmt: skip
    return (logits.argmax(-1) == data.columns["labels"]).float().mean().item()


class ValidationCurve(TrainerCallback):
    """The validation accuracy at the end of every epoch (of the model, or of each peer of mutual learning)."""

    def __init__(self, validation: InMemoryDataset, models):
        self.validation, self.models, self.curve = validation, models, []

    def on_epoch_end(self, args, state, control, **kwargs):
        self.curve.append(round(max(accuracy(model, self.validation) for model in self.models()), 4))
        for model in self.models():
            model.train()


def arguments(config_class, output_dir: Path, seed: int, epochs: int, **settings):
    return config_class(
        output_dir=str(output_dir / f"run-{os.getpid()}"), num_train_epochs=epochs, per_device_train_batch_size=128,
        learning_rate=1e-3, lr_scheduler_type="linear", warmup_steps=0, save_strategy="no", report_to="none",
        logging_steps=200, seed=seed, disable_tqdm=True, dataloader_pin_memory=False, use_cpu=True, **settings,
    )  # fmt: skip


def train_teacher(seed: int, train, validation, epochs: int, output_dir: Path):
    """A CNN teacher (cached in `output_dir/teacher-<seed>`), trained on the plain training images."""
    directory = output_dir / f"teacher-{seed}"
    if (directory / "config.json").is_file():
        return AutoModelForImageClassification.from_pretrained(directory).eval()
    begun = time.time()
    teacher = seeded(seed, lambda: model_from_preset("cifar10-cnn-student", **TEACHER))
    args = arguments(TrainingArguments, output_dir, seed, epochs, remove_unused_columns=False)
    curve = ValidationCurve(validation, lambda: [teacher])
    Trainer(model=teacher, args=args, train_dataset=train, data_collator=collate_batches, callbacks=[curve]).train()
    teacher.save_pretrained(directory)
    (directory / "training.json").write_text(json.dumps({"validation_curve": curve.curve, "epochs": epochs,
                                                          "seconds": round(time.time() - begun)}))  # fmt: skip
    print(f"teacher {seed}: validation per epoch {curve.curve}", flush=True)
    return teacher.eval()


def with_logits(data: InMemoryDataset, teachers: list, cache: Path, name: str) -> InMemoryDataset:
    """`data` with the teachers' logits (averaged over the teachers, hf_kd's `mean_logits` ensemble), cached."""
    path = cache / f"logits-{name}.pt"
    if not path.is_file():
        logits = [add_teacher_logits(data, teacher, batch_size=1000).columns["teacher_logits"] for teacher in teachers]
        torch.save(torch.stack(logits).mean(0), path)
    return data.with_column("teacher_logits", torch.load(path))


def student():
    return model_from_preset("mnist-mlp-student")


def distil(train, validation, seed: int, epochs: int, output_dir: Path, **settings) -> tuple:
    """One student: `alpha=0` is CE only; returns the student, its starting fingerprint, its validation curve."""
    model = seeded(seed, student)
    start = weights_fingerprint(model)
    curve = ValidationCurve(validation, lambda: [model])
    args = arguments(DistillationConfig, output_dir, seed, epochs, **settings)
    DistillationTrainer(model=model, args=args, train_dataset=train, callbacks=[curve]).train()
    return model, start, curve.curve


def run_method(study: Study, method: str, train, validation, test, options, **settings) -> None:
    for seed in options.seeds:
        begun = time.time()
        model, start, curve = distil(train, validation, seed, options.epochs, options.output_dir, **settings)
        study.record(method, seed, accuracy(model, test), validation_curve=curve, start=start,
                     seconds=round(time.time() - begun), settings=settings)  # fmt: skip
        print(method, seed, study.runs[method][seed]["score"], curve, flush=True)


def mutual(study: Study, train, validation, test, options) -> None:
    """Deep mutual learning of two MLP students, no teacher; peer 0 (seeded like every other student) is scored."""
    for seed in options.seeds:
        begun = time.time()
        peers = [seeded(seed, student), seeded(1000 + seed, student)]
        start = weights_fingerprint(peers[0])
        curve = ValidationCurve(validation, lambda: peers[:1])
        args = arguments(MutualLearningConfig, options.output_dir, seed, options.epochs, temperature=1.0,
                         remove_unused_columns=False)
        MutualLearningTrainer(models=peers, args=args, train_dataset=train, callbacks=[curve]).train()
        study.record("mutual learning (2 MLPs)", seed, accuracy(peers[0], test), validation_curve=curve.curve,
                     start=start, seconds=round(time.time() - begun))  # fmt: skip


def teacher_notes(study: Study, teachers: list, test, output_dir: Path) -> None:
    study.notes["teachers (test accuracy)"] = {i: accuracy(t, test) for i, t in enumerate(teachers)}
    study.notes["teachers' training"] = [json.loads((output_dir / f"teacher-{i}" / "training.json").read_text())
                                         for i in range(len(teachers))]  # fmt: skip
    study.notes["teacher"] = f"CNN {TEACHER}, test accuracy {study.notes['teachers (test accuracy)'][0]:.2%}"


def full_study(options, train, validation, test, teacher) -> None:
    """CE only and logit KD (T, alpha chosen on validation), then the extras: mutual learning, an ensemble of two
    CNN teachers (the second one trained here, when first needed)."""
    sizes = {"train": len(train), "validation": len(validation), "test": len(test)}
    study = Study("Fashion-MNIST CNN -> MLP, every label", "CE only", options.seeds, sizes, options.output_dir,
                  stem="full")  # fmt: skip
    teacher_notes(study, [teacher], test, options.output_dir)
    data = with_logits(train, [teacher], options.output_dir, "train-0")
    run_method(study, "CE only", data, validation, test, options, alpha=0.0)

    def validation_score(settings):
        return distil(data, validation, 0, options.epochs, options.output_dir, **settings)[2][-1]

    best, tried = choose_on_validation(GRID, validation_score)
    study.notes["logit KD grid (validation accuracy, seed 0)"] = [[s, v] for s, v in tried]
    study.notes["logit KD chosen"] = best
    study.notes["logit KD setting"] = f"T and alpha chosen on the validation split from {len(GRID)}: {best}"
    run_method(study, "logit KD", data, validation, test, options, **best)
    if "mutual" in options.extras:
        study.notes["mutual"] = "two MLP students trained together (DML, T=1, kl_weight 1), no teacher; peer 0 scored"
        mutual(study, train, validation, test, options)
    if "ensemble" in options.extras:
        second = train_teacher(1, train, validation, options.teacher_epochs, options.output_dir)
        teacher_notes(study, [teacher, second], test, options.output_dir)
        both = with_logits(train, [teacher, second], options.output_dir, "train-ensemble")
        study.notes["ensemble"] = "the two CNN teachers' logits averaged; the same temperature and alpha as logit KD"
        run_method(study, "logit KD, ensemble of 2 CNNs", both, validation, test, options, **best)


def chosen_setting(output_dir: Path) -> dict:
    """The logit-KD setting the full study chose on validation (the few-labels study reuses it)."""
    path = output_dir / "full.json"
    chosen = json.loads(path.read_text())["notes"].get("logit KD chosen") if path.is_file() else None
    if chosen is None:
        raise SystemExit(f"run the `full` stage first: {path} holds no validation-chosen logit-KD setting yet.")
    return chosen


def few_labels_study(options, train, validation, test, teacher, best: dict) -> None:
    data = with_logits(train, [teacher], options.output_dir, "train-0")
    answers = data.columns["teacher_logits"].argmax(-1)
    for fraction in options.label_fractions:
        count = round(fraction * len(train))
        labelled = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:count]
        hard = data.columns["labels"].clone()
        unlabelled = torch.ones(len(train), dtype=torch.bool)
        unlabelled[labelled] = False
        hard[unlabelled] = answers[unlabelled]
        sizes = {"labelled": count, "teacher-answered": len(train) - count, "validation": len(validation),
                 "test": len(test)}  # fmt: skip
        study = Study(f"Fashion-MNIST CNN -> MLP, {fraction:.0%} of the labels", "CE, labelled only", options.seeds,
                      sizes, options.output_dir, stem=f"few_labels_{fraction:g}")  # fmt: skip
        study.notes["settings"] = f"logit KD uses the setting chosen on validation in the full study: {best}"
        # The labelled images repeated up to the training set's size: CE on them alone trains for as many optimizer
        # steps (and validation points) as the runs on every image.
        repeated = labelled.repeat(-(-len(train) // count))[: len(train)]
        run_method(study, "CE, labelled only", subset(data, repeated), validation, test, options, alpha=0.0)
        answered = data.with_column("labels", hard)
        run_method(study, "CE, labels + teacher's hard answers", answered, validation, test, options, alpha=0.0)
        run_method(study, "logit KD, labels + teacher's logits", answered, validation, test, options, **best)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/fashion_cnn_to_mlp"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=12, help="student epochs over the training images")
    parser.add_argument("--teacher_epochs", type=int, default=6)
    parser.add_argument("--train_examples", type=int, default=None, help="a subset, for a quick check of the script")
    parser.add_argument("--stages", nargs="+", default=["full", "few_labels"], choices=["full", "few_labels"])
    parser.add_argument("--extras", nargs="*", default=["mutual", "ensemble"], choices=["mutual", "ensemble"])
    parser.add_argument("--label_fractions", type=float, nargs="+", default=[0.01, 0.1])
    options = parser.parse_args()
    torch.set_num_threads(1)
    full, test = load_split("train", options.output_dir), load_split("test", options.output_dir)
    train_indices, validation_indices = carve_validation(len(full), VALIDATION)
    if options.train_examples:
        train_indices = train_indices[: options.train_examples]
    train, validation = subset(full, train_indices), subset(full, validation_indices)
    teacher = train_teacher(0, train, validation, options.teacher_epochs, options.output_dir)
    if "full" in options.stages:
        full_study(options, train, validation, test, teacher)
    if "few_labels" in options.stages:
        few_labels_study(options, train, validation, test, teacher, chosen_setting(options.output_dir))


if __name__ == "__main__":
    main()
