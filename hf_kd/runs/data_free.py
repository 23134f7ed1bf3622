"""Data-free distillation as an experiment stage, and the examples' `--distillation_mode data_free` run.

- [`load_evaluation_data`]: the evaluation split decoded once (the only split the data-free student's run needs; the
  training split, when the dataset has one, only for the CE-only baseline).
- [`distil_data_free`]: the student distilled from the teacher alone by [`DataFreeDistillationTrainer`], a
  [`Trained`] named `student_data_free`.
- [`run_data_free`]: teacher (loaded) -> CE-only baseline (when there is a training split) -> data-free student ->
  measure -> report, with a section on the real training examples each model saw, their training time and a grid of
  synthetic samples (`synthetic_samples.png`), also in the student's model card.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from accelerate import PartialState
from transformers import PreTrainedModel, set_seed

from ..data import (
    InMemoryDataset,
    collate_batches,
    detect_image_columns,
    label_names,
    load_raw_dataset,
    preprocess_image_dataset,
    select_split,
)
from ..report.report import REPORT_MD
from ..training.configuration_data_free import DataFreeConfig
from ..training.configuration_distillation import DistillationConfig
from ..training.data_free import DataFreeDistillationTrainer
from ..utils import atomic_write
from .arguments import DataArguments, ExperimentArguments
from .experiment import (
    TEACHER_DIR,
    ModelData,
    Trained,
    compute_metrics_for,
    measure,
    publish,
    run_stage,
    stage_args,
    train_baseline,
    write_report,
)
from .recipes import build_image_model, load_image_teacher

DATA_FREE_DIR = "student_data_free"
GENERATOR_DIR = "generator"  # beside the student, not in its directory: it does not ship (or count) with the student
SAMPLES_PNG = "synthetic_samples.png"
SUMMARY_JSON = "data_free.json"


def load_evaluation_data(data_args: DataArguments, image_processor) -> tuple[ModelData, list[str]]:
    """The evaluation split decoded and normalised once, and the training split too when the dataset has one (for the
    CE-only baseline; `ModelData.train_dataset` is `None` otherwise). Classes: the evaluation split's."""
    with PartialState().main_process_first():
        raw = load_raw_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=data_args.dataset_cache_dir)
        name = data_args.dataset_name if isinstance(data_args.dataset_name, str) else None
        evaluation = select_split(raw, data_args.eval_split, "eval_split", name)
        image_column, label_column = detect_image_columns(evaluation, data_args.image_column, data_args.label_column)
        names = label_names(evaluation, label_column)
        splits = {"eval": (evaluation, data_args.max_eval_samples)}
        if data_args.train_split in raw:
            splits["train"] = (raw[data_args.train_split], data_args.max_train_samples)
        processed = {}
        for key, (split, limit) in splits.items():
            if limit is not None:
                split = split.select(range(min(limit, len(split))))
            processed[key] = InMemoryDataset.from_dataset(preprocess_image_dataset(
                split, image_processor, image_column, label_column, num_proc=data_args.preprocessing_num_workers,
                desc=f"Decoding and normalising the {key} images",
            ))  # fmt: skip
    return ModelData(processed.get("train"), processed["eval"], collate_batches, image_processor), names


def distil_data_free(
    student: PreTrainedModel, teacher: PreTrainedModel, data: ModelData, config: DistillationConfig,
    experiment_args: ExperimentArguments, compute_metrics: Callable, name: str = DATA_FREE_DIR,
) -> Trained:  # fmt: skip
    """`student` distilled from `teacher` without training data ([`DataFreeDistillationTrainer`]): the run's settings
    (learning rate, temperature, seed...) with `--data_free_method`, `--data_free_steps`, `--data_free_batch_size` and
    `--data_free_options` (any other [`DataFreeConfig`] field). Evaluated on the evaluation split."""
    options = json.loads(experiment_args.data_free_options or "{}")
    args = DataFreeConfig.from_config(
        stage_args(config, name, precompute_teacher_logits=False, remove_unused_columns=False),
        data_free_method=experiment_args.data_free_method, max_steps=experiment_args.data_free_steps,
        per_device_train_batch_size=experiment_args.data_free_batch_size, save_generator=False, **options,
    )  # fmt: skip
    set_seed(config.seed)
    trainer = DataFreeDistillationTrainer(
        model=student, teacher_model=teacher, args=args, eval_dataset=data.eval_dataset,
        processing_class=data.processing_class, compute_metrics=compute_metrics,
    )  # fmt: skip
    trained = run_stage(name, trainer, data)
    if trainer.generator is not None and args.should_save:
        trainer.generator.save_pretrained(Path(config.output_dir) / GENERATOR_DIR)
    return trained


def save_sample_grid(trainer: DataFreeDistillationTrainer, path: Path, count: int = 64) -> bool:
    """A grid of `count` synthetic images as a PNG (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    images = trainer.sample_images(count).cpu()
    side = int(count**0.5)
    figure, axes = plt.subplots(side, side, figsize=(side, side))
    for image, ax in zip(images, axes.flat):
        ax.imshow(image.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
    figure.suptitle(f"Synthetic inputs ({trainer.args.data_free_method})", fontsize=9)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return True


def examples_section(runs: list[Trained], grid: str | None, args: DataFreeConfig) -> tuple[str, dict]:
    """The report's section on what each model was trained on, in Markdown, and as a dict for `data_free.json`."""
    rows = {}
    for run in runs:
        if run.name == DATA_FREE_DIR:
            seen = 0
        elif run.name == TEACHER_DIR:
            seen = None  # trained before this run, on data this run does not read
        else:
            seen = len(run.data.train_dataset)
        rows[run.name] = {"real_training_examples": seen, "train_time_s": run.train_time_s}
    lines = ["", "## Training data seen", "", "| Model | Real training examples seen | Training time (s) |",
             "|---|---:|---:|"]  # fmt: skip
    for name, row in rows.items():
        seen = "before this run" if row["real_training_examples"] is None else f"{row['real_training_examples']:,}"
        time_s = "-" if row["train_time_s"] is None else f"{row['train_time_s']:.1f}"
        lines.append(f"| {name} | {seen} | {time_s} |")
    lines += ["", (f"`{DATA_FREE_DIR}` was distilled from the teacher alone, on synthetic inputs: it never read a "
                  "training example (the dataset's training split, if any, trained only the CE-only baseline). "
                  f"Method `{args.data_free_method}`, {args.max_steps} steps of {args.per_device_train_batch_size} "
                  f"synthetic inputs, student loss {args.student_loss} (T={args.temperature:g}), lr "
                  f"{args.learning_rate:g}, generator lr {args.generator_learning_rate:g}; the generator is in "
                  f"`{GENERATOR_DIR}/` (see docs/data-free.md).")]  # fmt: skip
    if grid:
        lines += ["", f"![synthetic inputs the data-free student was trained on]({grid})"]
    return "\n".join(lines) + "\n", rows


def run_data_free(
    data_args: DataArguments, experiment_args: ExperimentArguments, config: DistillationConfig, metric, image_processor
):  # fmt: skip
    """The examples' `--distillation_mode data_free`: a trained teacher (`--teacher_model_name_or_path`) distilled into
    the student without reading the training split, beside the CE-only baseline when there is a training split."""
    compute_metrics = compute_metrics_for(metric)
    data, names = load_evaluation_data(data_args, image_processor)
    path = config.teacher_model_name_or_path
    source, pretrained = experiment_args.student_source, bool(experiment_args.student_model_name_or_path)
    probe = build_image_model(source, names, config.seed, pretrained)
    teacher = load_image_teacher(path, probe, config.teacher_model_init_kwargs).eval()
    runs = [Trained(TEACHER_DIR, teacher, data)]
    if data.train_dataset is not None and not experiment_args.skip_baseline:
        runs.append(train_baseline(build_image_model(source, names, config.seed, pretrained), data, config,
                                   compute_metrics))  # fmt: skip
    student = build_image_model(source, names, config.seed, pretrained)
    runs.append(distil_data_free(student, teacher, data, config, experiment_args, compute_metrics))
    state, report = PartialState(), None
    if state.is_main_process:
        report = _report(runs, path, metric, data_args, experiment_args, config)
    state.wait_for_everyone()
    return report


def _report(runs: list[Trained], teacher_name: str, metric, data_args, experiment_args, config):
    output_dir, distilled = Path(config.output_dir), runs[-1]
    results, _ = measure(runs, output_dir, metric, config.per_device_eval_batch_size, experiment_args.latency_examples)
    report = write_report(runs, results, "image-classification", teacher_name, metric, data_args, config,
                          experiment_args.plot)  # fmt: skip
    grid = SAMPLES_PNG if save_sample_grid(distilled.trainer, output_dir / SAMPLES_PNG) else None
    args = distilled.trainer.args
    section, rows = examples_section(runs, grid, args)
    atomic_write(output_dir / REPORT_MD, (output_dir / REPORT_MD).read_text() + section)
    summary = {"method": args.data_free_method, "models": rows, "grid": grid, "settings": {
        key: getattr(args, key) for key in ("max_steps", "per_device_train_batch_size", "learning_rate", "temperature",
                                            "generator_learning_rate", "student_loss", "seed")}}  # fmt: skip
    atomic_write(output_dir / SUMMARY_JSON, json.dumps(summary, indent=1))
    print(section)
    publish(distilled, data_args, config)
    card_dir = Path(distilled.trainer.args.output_dir)
    if grid:
        shutil.copyfile(output_dir / SAMPLES_PNG, card_dir / SAMPLES_PNG)
    card = card_dir / "README.md"
    if card.is_file():
        atomic_write(card, card.read_text() + section)
    return report
