#!/usr/bin/env python
"""Fashion-MNIST, a CNN teacher distilled into an MLP student (784-100-10): a regime where the teacher knows much more
than the student learns alone. Built on studies/harness.py (validation carved from the training split, same start
and data order per seed, paired differences, gain only beyond 2 SE).

Stages (each writes `<stage>.md` / `<stage>.json` in `--output_dir`; the teachers and their logits are cached there,
so a second run reuses them):

- `full`: every label; CE only vs logit KD (temperature and alpha chosen on the validation split from a small grid),
  then, when listed in `--extras`, mutual learning of two MLPs (no teacher), an ensemble of two CNN teachers
  (logits averaged; the second teacher is trained when first needed) and a white-box term on the penultimate
  features (RKD or a hint, term and weight chosen on validation; the teacher's features cached once), the last two
  also paired against single-teacher logit KD.
- `few_labels`: 1% / 10% of the training labels; the rest of the training images answered by the teacher
  (its logits, computed in this process): CE on the labelled images only, CE on labels + the teacher's hard answers,
  logit KD on all images.

    nice -n 10 python studies/fashion_cnn_to_mlp.py --stages full --extras mutual ensemble whitebox \
        --output_dir outputs/fashion_cnn_to_mlp
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
from harness import (
    SHARED_DATA,
    Study,
    carve_validation,
    choose_on_validation,
    paired_difference,
    seeded,
    verdict,
    weights_fingerprint,
)
from PIL import Image
from transformers import AutoModelForImageClassification, Trainer, TrainerCallback, TrainingArguments

from hf_kd import (
    DistillationConfig,
    DistillationTrainer,
    MutualLearningConfig,
    MutualLearningTrainer,
    add_teacher_logits,
    model_from_preset,
)
from hf_kd.data import InMemoryDataset, collate_batches

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set statistics
VALIDATION = 5000
# The teacher: the CIFAR-10 student preset for 1x28x28 with 32-channel convs (conv 1->32, pool, conv 32->32, pool,
# FC 1568->128, dropout 0.25, 128->10: 211,690 parameters, 2.7x the student's 79,510), sized so that a shared 2-core
# CPU trains it in minutes; what it knows beyond the student is its convolutions, not its size.
TEACHER = {"num_channels": 1, "image_size": 28, "conv_channels": [32, 32], "classifier_hidden_sizes": [128],
           "dropout": 0.25}  # fmt: skip
GRID = [{"temperature": t, "alpha": a} for t in (2.0, 4.0, 8.0) for a in (0.5, 0.9)]
# White-box: the penultimate features (hidden_states: pixels, then per layer its pre-ReLU output and its block output;
# the teacher's are 2 convs then its FC layer, so .6 is the FC block's output, the classifier's input).
TEACHER_FEATURE, STUDENT_FEATURE = "hidden_states.6", "hidden_states.2"
WHITE_BOX_GRID = [{"feature_loss": loss, "feature_weight": w} for loss in ("rkd", "hint") for w in (0.1, 1.0, 10.0)]


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


def distil(train, validation, seed: int, epochs: int, output_dir: Path, teacher=None, **settings) -> tuple:
    """One student: `alpha=0` is CE only; returns the student, its starting fingerprint, its validation curve and its
    training losses at the end (`loss_ce`, `loss_kd`, `loss_feature`: means over the last logging window).
    `teacher` is given only for a feature term (its shape probe); its features and logits are the columns `train`
    carries, it never runs."""
    model = seeded(seed, student)
    start = weights_fingerprint(model)
    curve = ValidationCurve(validation, lambda: [model])
    args = arguments(DistillationConfig, output_dir, seed, epochs, **settings)
    trainer = DistillationTrainer(model=model, teacher_model=teacher, args=args, train_dataset=train,
                                  callbacks=[curve])  # fmt: skip
    trainer.train()
    losses = {k: round(v, 4) for k, v in trainer.state.log_history[-1].items() if k.startswith("loss")}
    return model, start, curve.curve, losses


def run_method(study: Study, method: str, train, validation, test, options, teacher=None, **settings) -> None:
    for seed in options.seeds:
        begun = time.time()
        model, start, curve, losses = distil(train, validation, seed, options.epochs, options.output_dir, teacher,
                                             **settings)  # fmt: skip
        study.record(method, seed, accuracy(model, test), validation_curve=curve, start=start, losses=losses,
                     seconds=round(time.time() - begun), settings=settings)  # fmt: skip
        print(method, seed, study.runs[method][seed]["score"], curve, losses, flush=True)


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
        ensemble(study, teacher, train, validation, test, options, best)
    if "whitebox" in options.extras:
        white_box(study, teacher, data, validation, test, options, best)


def versus_logit_kd(study: Study, method: str) -> None:
    """A note: `method` against single-teacher logit KD, paired on the same seeds (the table pairs against CE only)."""
    pair = paired_difference(study.scores(method), study.scores("logit KD"))
    study.notes[f"{method} vs logit KD"] = (
        f"{100 * pair['mean']:+.2f} ± {100 * pair['se']:.2f} (paired, ± SE, seeds {pair['seeds']}): "
        f"{verdict(pair['mean'], pair['se'])}"
    )
    study.write()


def ensemble(study: Study, teacher, train, validation, test, options, best: dict) -> None:
    """Logit KD from two CNN teachers' averaged logits (the second teacher trained here when first needed), and how
    much the second teacher adds: the two teachers' agreement and the averaged logits' accuracy (test, report only)."""
    second = train_teacher(1, train, validation, options.teacher_epochs, options.output_dir)
    teacher_notes(study, [teacher, second], test, options.output_dir)
    both = with_logits(train, [teacher, second], options.output_dir, "train-ensemble")
    with torch.no_grad():
        pixels = test.columns["pixel_values"]
        logits = [torch.cat([t(pixel_values=pixels[i : i + 2000]).logits for i in range(0, len(test), 2000)])
                  for t in (teacher, second)]  # fmt: skip
    labels, answers = test.columns["labels"], [t.argmax(-1) for t in logits]
    agreement = (answers[0] == answers[1]).float().mean().item()
    averaged = (torch.stack(logits).mean(0).argmax(-1) == labels).float().mean().item()
    study.notes["teachers' agreement (test, same top-1)"] = round(agreement, 4)
    study.notes["averaged logits' accuracy (test)"] = round(averaged, 4)
    study.notes["ensemble"] = (
        f"the two CNN teachers' logits averaged; the same temperature and alpha as logit KD; the teachers agree on "
        f"{agreement:.2%} of the test images, their averaged logits score {averaged:.2%}"
    )
    run_method(study, "logit KD, ensemble of 2 CNNs", both, validation, test, options, **best)
    versus_logit_kd(study, "logit KD, ensemble of 2 CNNs")


def with_features(data: InMemoryDataset, teacher, cache: Path) -> InMemoryDataset:
    """`data` (carrying the teacher's logits) with its penultimate feature as `teacher_feature_0`, computed once and
    cached: the trainer then reads it like its own cache, and the teacher never runs while the students train."""
    path = cache / "features-train-0.pt"
    if not path.is_file():
        plain = InMemoryDataset({k: v for k, v in data.columns.items() if k != "teacher_logits"})
        torch.save(add_teacher_logits(plain, teacher, batch_size=1000, features=[TEACHER_FEATURE]).columns[
            "teacher_feature_0"], path)  # fmt: skip
    return data.with_column("teacher_feature_0", torch.load(path))


def white_box(study: Study, teacher, data, validation, test, options, best: dict) -> None:
    """A feature term on the penultimate features added to logit KD at its chosen T and alpha: the term and its
    weight chosen on validation (seed 0), then the seeds. A CNN and an MLP share no spatial map: the teacher's 128-d
    FC feature against the student's 100-d hidden layer, by relations (RKD, no connector) or a hint (Linear)."""
    # Both models were trained on Fashion-MNIST's label ids; their presets name the classes after their own datasets
    # (CIFAR-10's, MNIST's), which the trainer would refuse as two class orders once it is given the teacher.
    teacher.config.id2label, teacher.config.label2id = student().config.id2label, student().config.label2id
    begun = time.time()
    data = with_features(data, teacher, options.output_dir)
    cached_in = round(time.time() - begun)
    pair = {"feature_pairs": [f"{STUDENT_FEATURE}:{TEACHER_FEATURE}"]}
    candidates = [{**best, **pair, **term} for term in WHITE_BOX_GRID]
    tried = []

    def validation_score(settings):
        _, _, curve, losses = distil(data, validation, 0, options.epochs, options.output_dir, teacher, **settings)
        tried.append({"setting": settings, "validation_curve": curve, "losses": losses})
        return curve[-1]

    chosen, _ = choose_on_validation(candidates, validation_score)
    study.notes["white-box grid (seed 0: validation curve, losses over the last logging window)"] = tried
    study.notes["white-box chosen"] = chosen
    study.notes["white-box"] = (
        f"a feature term on student {STUDENT_FEATURE} (100, after ReLU) vs teacher {TEACHER_FEATURE} (128, its FC "
        f"layer after ReLU), added to logit KD {best}; term and weight chosen on validation from "
        f"{[(t['feature_loss'], t['feature_weight']) for t in WHITE_BOX_GRID]}: {chosen['feature_loss']}, weight "
        f"{chosen['feature_weight']}; the teacher's features cached in one pass ({cached_in} s, or read from its cache)"
    )
    method = f"logit KD + {chosen['feature_loss']} (penultimate)"
    run_method(study, method, data, validation, test, options, teacher, **chosen)
    versus_logit_kd(study, method)


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
    extras = ["mutual", "ensemble", "whitebox"]
    parser.add_argument("--extras", nargs="*", default=extras, choices=extras)
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
