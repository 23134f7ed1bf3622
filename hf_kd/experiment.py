"""The teacher -> student experiment that the examples run: train (or load) the teacher, distil the student, train the
same student on the labels alone as the baseline, measure all three, write the report and the student's model card.

[`run_distillation`] runs that sequence for any modality; a [`DistillationTask`] supplies what differs (data,
collators, processors, teacher, how to build the student): [`image_distillation_task`] here,
[`hf_kd.text.text_distillation_task`] for text.
An example script only names its dataset and models (as argument defaults) and calls [`run_image_distillation`]:

```python
from hf_kd.experiment import parse_image_arguments, run_image_distillation

DEFAULTS = {"dataset_name": "ylecun/mnist", "teacher": "mnist-mlp-teacher", "student": "mnist-mlp-student",
            "output_dir": "distill-mnist"}

def main(argv=None):
    return run_image_distillation(*parse_image_arguments(DEFAULTS, argv))
```
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    HfArgumentParser,
    PreTrainedModel,
    Trainer,
    set_seed,
)
from transformers.trainer_utils import IntervalStrategy
from transformers.utils import logging

from .configuration_distillation import DistillationConfig
from .data import InMemoryDataset, RandomShiftCollator, collate_batches, load_image_classification_dataset
from .metrics import compute_metrics_fn, load_metric, metric_value
from .modelcard import push_to_hub
from .models import PRESET_NAMES, image_processor_for_preset, model_from_preset
from .report import (
    REPORT_JSON,
    REPORT_MD,
    REPORT_PNG,
    DistillationReport,
    ModelResult,
    dataset_labels,
    has_finished_report,
    measure_model,
)
from .teacher import add_teacher_logits, load_teacher
from .trainer import DistillationTrainer

logger = logging.get_logger(__name__)

TEACHER_DIR, STUDENT_KD_DIR, STUDENT_CE_DIR = "teacher", "student_kd", "student_ce"


# ---------------------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class DataArguments:
    """Which data, and which of its columns and splits. Image columns are detected when not given."""

    dataset_name: str = field(
        default=None,
        metadata={
            "help": "The dataset: a Hub id (ylecun/mnist), a local directory load_dataset reads (imagefolder, "
            "parquet, ...) or a directory written by save_to_disk."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration."})
    train_split: str = field(default="train", metadata={"help": "The split to train on."})
    eval_split: str = field(default="test", metadata={"help": "The split every model is evaluated and reported on."})
    image_column: str | None = field(
        default=None, metadata={"help": "The image column (default: the column with the Image feature)."}
    )
    label_column: str | None = field(
        default=None, metadata={"help": "The label column (default: the column with the ClassLabel feature)."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on the first N training examples only (quick runs, tests)."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on the first N test examples only."})
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for the one-time image preprocessing (Dataset.map num_proc)."}
    )
    dataset_cache_dir: str | None = field(
        default=None, metadata={"help": "Where load_dataset caches (default: HF_DATASETS_CACHE)."}
    )


@dataclass
class ExperimentArguments:
    """The models and the sequence around the distillation: teacher training, baseline, evaluation, report.

    The distillation itself (temperature, alpha, loss_type, teacher_model_name_or_path) and the student's training
    (epochs, learning rate, batch size, seed) are `DistillationConfig` arguments; the teacher and the CE-only
    baseline reuse the student's training settings unless overridden here.
    """

    teacher: str = field(
        default=None,
        metadata={
            "help": f"Architecture of the teacher trained here: a preset ({', '.join(PRESET_NAMES)}) or a directory "
            "holding a model config. Ignored when --teacher_model_name_or_path names a trained teacher to load."
        },
    )
    student: str = field(
        default=None,
        metadata={
            "help": "Architecture of the student: a preset or a directory holding a model config (and processor)."
        },
    )
    teacher_num_train_epochs: float | None = field(
        default=None, metadata={"help": "Epochs of the teacher's training (default: --num_train_epochs)."}
    )
    teacher_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the teacher's training (default: --learning_rate)."}
    )
    teacher_max_shift: int = field(
        default=0,
        metadata={
            "help": "Train the teacher on images translated by up to this many pixels at random (Hinton et al.'s "
            "jitter; 0 = off). Students see the original images."
        },
    )
    skip_baseline: bool = field(
        default=False,
        metadata={"help": "Do not train the CE-only student (the baseline that shows what distillation adds)."},
    )
    metric_name_or_path: str = field(
        default="accuracy",
        metadata={
            "help": "The evaluate metric: a Hub name or a local metric module directory (for machines without "
            "Hub access). 'accuracy' falls back to a built-in copy when the Hub cannot be reached."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Run even if output_dir holds the report of a finished run (its results are replaced)."},
    )
    latency_examples: int = field(
        default=200, metadata={"help": "Test examples timed one at a time for the batch-1 latency."}
    )
    plot: bool = field(default=True, metadata={"help": "Draw distillation_report.png (needs matplotlib)."})
    torch_num_threads: int | None = field(
        default=None,
        metadata={
            "help": "CPU threads for torch's operations (default: torch's choice). Small models train faster on one: "
            "their matrices are too small to split, and on a busy machine threads wait on each other at every op."
        },
    )


def parse_image_arguments(
    defaults: dict[str, Any] | None = None, argv: list[str] | None = None
) -> tuple[DataArguments, ExperimentArguments, DistillationConfig]:
    """Parse `argv` (default: `sys.argv[1:]`) into the three argument groups, with an example's `defaults` (any
    argument of any group) replacing the dataclasses' own. A single `.json` / `.yaml` argument is read as a file."""
    parser = HfArgumentParser((DataArguments, ExperimentArguments, DistillationConfig))
    if defaults:
        unknown = sorted(set(defaults) - {action.dest for action in parser._actions})
        if unknown:
            raise ValueError(f"Unknown argument names in the example's defaults: {unknown}.")
        parser.set_defaults(**defaults)
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(os.path.abspath(argv[0]))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(os.path.abspath(argv[0]))
    data_args, experiment_args, config = parser.parse_args_into_dataclasses(args=argv)
    for name, value in (("dataset_name", data_args.dataset_name), ("student", experiment_args.student)):
        if not value:
            raise ValueError(f"--{name} is required.")
    if not experiment_args.teacher and not config.teacher_model_name_or_path:
        raise ValueError(
            "Give --teacher (an architecture to train) or --teacher_model_name_or_path (a trained teacher)."
        )
    return data_args, experiment_args, config


# ---------------------------------------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------------------------------------


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool) -> None:
    """Refuse to mix two runs' results: a directory holding a finished report is only reused when asked."""
    if has_finished_report(output_dir):
        if not overwrite:
            raise FileExistsError(
                f"The output directory {os.path.abspath(output_dir)} already holds a finished run "
                f"({REPORT_JSON}). Choose another --output_dir, or pass --overwrite_output_dir to replace its results."
            )
        # The old report goes first: if this run fails, no report describes models it replaced halfway.
        for name in (REPORT_JSON, REPORT_MD, REPORT_PNG):
            (Path(output_dir) / name).unlink(missing_ok=True)


def check_unsharded(config: DistillationConfig) -> None:
    """Refuse FSDP and DeepSpeed ZeRO-3: [`run_distillation`] measures and saves the models on the main process alone,
    which needs each process to hold whole weights (DDP and ZeRO-1/2 do; ZeRO-3 and FSDP keep a shard per process)."""
    from accelerate.utils import parse_flag_from_env

    sharded = None
    if parse_flag_from_env("ACCELERATE_USE_FSDP") or getattr(config, "fsdp", None):
        sharded = "FSDP"
    elif (
        parse_flag_from_env("ACCELERATE_USE_DEEPSPEED") and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"
    ) or (config.deepspeed and getattr(config, "hf_deepspeed_config", None) and config.hf_deepspeed_config.is_zero3()):
        sharded = "DeepSpeed ZeRO-3"
    if sharded:
        raise ValueError(
            f"The hf_kd examples do not support {sharded} yet: after training, the main process alone measures and "
            "saves the teacher and both students, and under sharded training it holds only a shard of their weights. "
            "Launch with examples/accelerate_configs/multi_gpu.yaml (DDP) or single_gpu.yaml, or DeepSpeed ZeRO-1/2; "
            "DistillationTrainer itself can be used under sharding in your own script."
        )


def _labels_kwargs(label_names: list[str]) -> dict[str, Any]:
    return {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: index for index, name in enumerate(label_names)},
    }


def build_image_model(name_or_path: str, label_names: list[str], seed: int) -> PreTrainedModel:
    """A freshly initialised classifier (seeded) for the dataset's classes, from a preset or a config directory."""
    set_seed(seed)
    if name_or_path in PRESET_NAMES:
        return model_from_preset(name_or_path, **_labels_kwargs(label_names))
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name_or_path, **_labels_kwargs(label_names))
    return AutoModelForImageClassification.from_config(config)


def image_processor_for(name_or_path: str):
    """The image processor of a preset, or the one saved in a model directory."""
    if name_or_path in PRESET_NAMES:
        return image_processor_for_preset(name_or_path)
    return AutoImageProcessor.from_pretrained(name_or_path)


def _replace_args(config: DistillationConfig, output_dir: str, **changes) -> DistillationConfig:
    """A copy of the run's arguments for one of its trainings (its own output dir, the teacher's epochs...)."""
    args = copy.deepcopy(config)
    args.output_dir = output_dir
    # No training of the run creates a repository or pushes checkpoints: with --push_to_hub, the distilled student
    # alone is published, once, at the end of `run_distillation`.
    args.push_to_hub = False
    for key, value in changes.items():
        setattr(args, key, value)
    return args


def distillation_train_dataset(
    train_dataset, teacher: torch.nn.Module, config: DistillationConfig, data_collator: Callable | None = None
):
    """
    The student's training data, and how the teacher's logits reach the loss (`"live"` or `"precomputed"`).

    With `precompute_teacher_logits`, [`add_teacher_logits`] runs the teacher once and adds a `teacher_logits` column
    (cached by fingerprint); [`DistillationTrainer`] then reads it instead of running the teacher at every step. It is
    done here rather than by the trainer because the trainer gets the in-memory copy of the data. `data_collator`
    batches the teacher's inputs (e.g. pads its own tokenization); default: rows stacked as they are.
    """
    if config.precompute_teacher_logits:
        dataset = add_teacher_logits(
            train_dataset,
            teacher,
            batch_size=config.teacher_batch_size,
            dtype=config.teacher_logits_dtype,
            data_collator=data_collator,
        )
        return dataset, "precomputed"
    return train_dataset, "live"


def _fill_value(image_processor) -> list[float]:
    """The normalised value of a black pixel, per channel, for the border that a shift uncovers."""
    mean = getattr(image_processor, "image_mean", None)
    std = getattr(image_processor, "image_std", None)
    if not getattr(image_processor, "do_normalize", False) or mean is None or std is None:
        return [0.0]
    mean, std = (
        list(mean) if isinstance(mean, (list, tuple)) else [mean],
        list(std) if isinstance(std, (list, tuple)) else [std],
    )
    return [-m / s for m, s in zip(mean, std)]


def _train(trainer: Trainer) -> float:
    output = trainer.train()
    return float(output.metrics["train_runtime"])


# ---------------------------------------------------------------------------------------------------------------------
# The run, for any modality
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class DistillationTask:
    """
    What a modality supplies to [`run_distillation`]: its prepared data, collators, processors and models. The
    sequence around them (teacher training, KD student, CE-only baseline, save, measure, report, model card) is the
    same for every modality.

    Args:
        task (`str`): The report's task, `"image-classification"` or `"text-classification"`.
        train_dataset (`datasets.Dataset`): The student's training split, model-ready (inputs and `labels`);
            precomputed teacher logits are added to it as a column.
        eval_dataset (`datasets.Dataset`): The student's test split, for evaluation during training and the report.
        data_collator (`Callable`): Builds the student's batches (and, by default, the teacher's).
        processing_class: The student's image processor or tokenizer, saved with both students.
        teacher (`PreTrainedModel`): The teacher: loaded, or freshly built to be trained here.
        teacher_name (`str`): Where the teacher came from, as the report says it (`"trained here"`, ...).
        train_teacher (`bool`): Train the teacher (cross-entropy) before distilling.
        build_student (`Callable[[PreTrainedModel], PreTrainedModel]`): Builds the student, given the ready teacher
            (a student derived from it needs it). Called twice, for the KD student and the baseline, which must come
            out identical: seed inside.
        teacher_train_dataset, teacher_eval_dataset, teacher_data_collator, teacher_processing_class: The teacher's
            own, when it reads other inputs than the student (its own tokenizer); default: the student's. The
            teacher's collator also batches the precomputation of its logits (default: rows stacked as they are).
        teacher_train_collator (`Callable`, *optional*): Collates the teacher's training batches only, e.g. random
            shifts. The teacher is then not evaluated during training: the Trainer would collate the test split
            with it too.
        in_memory (`bool`): Serve the datasets from memory ([`InMemoryDataset`]) for fixed-shape inputs such as
            images: every training reads them many times. `data_collator` must then pass its batches through
            ([`collate_batches`]), and the plain Trainers' column removal, which iterates over rows, is off (the
            in-memory columns are exactly the model's inputs).
        extra_metrics (`dict`): Metrics reported beside the main one in the training logs and the run's output,
            by display name (e.g. `{"F1": f1}`); the report's schema keeps the main one only.
    """

    task: str
    train_dataset: Any
    eval_dataset: Any
    data_collator: Callable
    processing_class: Any
    teacher: PreTrainedModel
    teacher_name: str
    train_teacher: bool
    build_student: Callable[[PreTrainedModel], PreTrainedModel]
    teacher_train_dataset: Any = None
    teacher_eval_dataset: Any = None
    teacher_data_collator: Callable | None = None
    teacher_processing_class: Any = None
    teacher_train_collator: Callable | None = None
    in_memory: bool = False
    extra_metrics: dict[str, Any] = field(default_factory=dict)


def _compute_metrics(metric, extra_metrics: dict[str, Any]) -> Callable:
    """The Trainers' `compute_metrics`: the main metric, then the extra ones (logged as `eval_<name lowercased>`)."""
    main = compute_metrics_fn(metric)
    if not extra_metrics:
        return main

    def compute_metrics(eval_prediction):
        scores = main(eval_prediction)
        logits = eval_prediction.predictions
        predictions = (logits[0] if isinstance(logits, tuple) else logits).argmax(-1)
        for name, extra in extra_metrics.items():
            scores[name.lower()] = metric_value(extra, predictions, eval_prediction.label_ids)
        return scores

    return compute_metrics


def run_distillation(
    prepare: Callable[[PartialState], DistillationTask],
    data_args: DataArguments,
    experiment_args: ExperimentArguments,
    config: DistillationConfig,
) -> DistillationReport | None:
    """
    Teacher, distilled student and CE-only baseline, then the report: the sequence every modality shares.

    1. Refuse an output directory holding a finished run (unless `--overwrite_output_dir`), then `prepare(state)`
       the modality's [`DistillationTask`]: data prepared once, teacher loaded or built, how to build the student.
    2. Teacher: trained here (plain cross-entropy, `--teacher_num_train_epochs` / `--teacher_learning_rate`) when
       the task says so; frozen in eval mode from then on.
    3. Student (KD): [`DistillationTrainer`] with `config`'s temperature, alpha and loss; the teacher's logits are
       precomputed once with `--precompute_teacher_logits`.
    4. Student (CE only): the same architecture, initial weights, seed, data order, epochs and schedule, trained on
       the labels alone (skipped with `skip_baseline`).
    5. On the main process: save the three models with their processors into
       `output_dir/{teacher,student_kd,student_ce}`, measure them on the test split, write
       `distillation_report.{md,json}` (+ `.png`), then the KD student's model card, pushed to the Hub with
       `--push_to_hub`. Returns the report on the main process, `None` on the others.
    """
    check_unsharded(config)
    state = PartialState()
    output_dir = Path(config.output_dir)
    if state.is_main_process:
        check_output_dir(output_dir, experiment_args.overwrite_output_dir)
    state.wait_for_everyone()
    if experiment_args.torch_num_threads:
        torch.set_num_threads(experiment_args.torch_num_threads)
    seed = config.seed

    task = prepare(state)
    metric = load_metric(experiment_args.metric_name_or_path)
    compute_metrics = _compute_metrics(metric, task.extra_metrics)
    collator = task.data_collator
    teacher_collator = task.teacher_data_collator or collator
    teacher_processing_class = task.teacher_processing_class or task.processing_class
    # Every training reads the training set many times: an in-memory task serves its splits as tensors, read once.
    serve = InMemoryDataset.from_dataset if task.in_memory else (lambda dataset: dataset)
    plain_args = {"remove_unused_columns": False} if task.in_memory else {}
    eval_dataset = serve(task.eval_dataset)
    teacher_eval = eval_dataset if task.teacher_eval_dataset is None else serve(task.teacher_eval_dataset)
    served_train = None

    def train_dataset():
        nonlocal served_train  # served once, for the teacher's training and the baseline's
        if served_train is None:
            served_train = serve(task.train_dataset)
        return served_train

    # --- Teacher ---------------------------------------------------------------------------------------------------
    teacher, teacher_time = task.teacher, None
    if task.train_teacher:
        augment = task.teacher_train_collator is not None
        teacher_args = _replace_args(
            config,
            str(output_dir / TEACHER_DIR),
            num_train_epochs=experiment_args.teacher_num_train_epochs or config.num_train_epochs,
            learning_rate=experiment_args.teacher_learning_rate or config.learning_rate,
            **plain_args,
            **({"eval_strategy": IntervalStrategy.NO} if augment else {}),
        )
        set_seed(seed)
        teacher_trainer = Trainer(
            model=teacher,
            args=teacher_args,
            train_dataset=train_dataset() if task.teacher_train_dataset is None else serve(task.teacher_train_dataset),
            # An augmenting collator applies to training batches only: the test split is scored by `measure_model`
            # below, never through this trainer's evaluation loop.
            eval_dataset=None if augment else teacher_eval,
            data_collator=task.teacher_train_collator if augment else teacher_collator,
            processing_class=teacher_processing_class,
            compute_metrics=None if augment else compute_metrics,
        )
        teacher_time = _train(teacher_trainer)
        teacher = teacher_trainer.model
    teacher.eval()

    # --- Student (KD) ----------------------------------------------------------------------------------------------
    with state.main_process_first():  # precomputed logits: one process computes and caches, the others read
        kd_train, teacher_logits = distillation_train_dataset(
            task.train_dataset, teacher, config, data_collator=task.teacher_data_collator
        )
    student = task.build_student(teacher)
    # The trainer gets the loaded teacher itself; its init kwargs were applied when loading it.
    kd_args = _replace_args(config, str(output_dir / STUDENT_KD_DIR), teacher_model_init_kwargs=None)
    kd_trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=kd_args,
        train_dataset=serve(kd_train),
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=task.processing_class,
        compute_metrics=compute_metrics,
    )
    kd_time = _train(kd_trainer)
    teacher.eval()

    # --- Student (CE only): the baseline -----------------------------------------------------------------------------
    # A plain Trainer, the model's own cross-entropy: what the user would get without distillation, and no teacher
    # forward pass to pay for. Same seed, so the same initial weights (built after the same set_seed) and the same
    # data order (the sampler's generator is seeded from args.seed); only the loss differs from the KD student.
    baseline, ce_time = None, None
    if not experiment_args.skip_baseline:
        ce_args = _replace_args(
            config, str(output_dir / STUDENT_CE_DIR), teacher_model_init_kwargs=None, **plain_args
        )
        ce_trainer = Trainer(
            model=task.build_student(teacher),
            args=ce_args,
            train_dataset=train_dataset(),
            eval_dataset=eval_dataset,
            data_collator=collator,
            processing_class=task.processing_class,
            compute_metrics=compute_metrics,
        )
        ce_time = _train(ce_trainer)
        baseline = ce_trainer.model

    if not state.is_main_process:
        state.wait_for_everyone()
        return None

    # --- Save, measure, report (main process) -------------------------------------------------------------------------
    student_side = (eval_dataset, collator, task.processing_class)
    runs = [("teacher", teacher, teacher_time, TEACHER_DIR, (teacher_eval, teacher_collator, teacher_processing_class))]
    if baseline is not None:
        runs.append(("student_ce", baseline, ce_time, STUDENT_CE_DIR, student_side))
    runs.append(("student_kd", kd_trainer.model, kd_time, STUDENT_KD_DIR, student_side))
    references = dataset_labels(eval_dataset)
    results: list[ModelResult] = []
    teacher_predictions, extra_scores = None, {name: {} for name in task.extra_metrics}
    for name, model, train_time, folder, (dataset, data_collator, processing_class) in runs:
        path = output_dir / folder
        model.save_pretrained(path)
        processing_class.save_pretrained(path)
        result, predictions = measure_model(
            name,
            model,
            dataset,
            lambda predictions, references: metric_value(metric, predictions, references),
            saved_path=path,
            output_dir=output_dir,
            train_time_s=train_time,
            teacher_predictions=teacher_predictions,
            batch_size=config.per_device_eval_batch_size,
            latency_examples=experiment_args.latency_examples,
            data_collator=data_collator,
        )
        for metric_name, extra in task.extra_metrics.items():
            extra_scores[metric_name][name] = metric_value(extra, predictions, references)
        if name == "teacher":
            teacher_predictions = predictions
        results.append(result)

    report = DistillationReport(
        dataset=str(data_args.dataset_name),
        task=task.task,
        teacher=task.teacher_name,
        metric=metric.name,
        settings={
            "temperature": float(config.temperature),
            "alpha": float(config.alpha),
            "loss_type": config.loss_type,
            "teacher_logits": teacher_logits,
            "num_train_epochs": float(config.num_train_epochs),
            "learning_rate": float(config.learning_rate),
            "seed": int(seed),
            "per_device_train_batch_size": int(config.per_device_train_batch_size),
            "world_size": int(kd_trainer.args.world_size),
        },
        models=results,
    )
    report.save(output_dir, plot=experiment_args.plot)
    print("\n" + report.to_markdown())
    for metric_name, scores in extra_scores.items():
        print(f"{metric_name}: " + ", ".join(f"{name} {score:.4f}" for name, score in scores.items()))
    print(f"Report and models written to {os.path.abspath(output_dir)}")

    # The distilled student's model card, with the report's table and plot; with --push_to_hub, the student's
    # directory (not the teacher's or the baseline's) goes to the Hub, to --hub_model_id or, as in transformers'
    # examples, a repository named after the output directory.
    hub_model_id = config.hub_model_id or output_dir.absolute().name
    card_kwargs = {"report": output_dir / REPORT_JSON, "eval_split": data_args.eval_split}
    if config.push_to_hub:
        kd_trainer.args.hub_model_id = hub_model_id
        commit = push_to_hub(kd_trainer, **card_kwargs)
        print(f"Distilled student pushed to {commit.commit_url}")
    else:
        kd_trainer.create_model_card(model_name=hub_model_id.split("/")[-1], **card_kwargs)
    state.wait_for_everyone()
    return report


# ---------------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------------


def image_distillation_task(
    state: PartialState, data_args: DataArguments, experiment_args: ExperimentArguments, config: DistillationConfig
) -> DistillationTask:
    """The image side of [`run_distillation`]: the dataset decoded and normalised once with the student's image
    processor and served from memory; the teacher loaded from `config.teacher_model_name_or_path` or built from
    `experiment_args.teacher` to be trained here (with random shifts when `teacher_max_shift > 0`)."""
    seed = config.seed
    image_processor = image_processor_for(experiment_args.student)
    with state.main_process_first():  # one process fills the datasets cache, the others read it
        datasets, label_names = load_image_classification_dataset(
            data_args.dataset_name,
            image_processor,
            dataset_config_name=data_args.dataset_config_name,
            train_split=data_args.train_split,
            eval_split=data_args.eval_split,
            image_column=data_args.image_column,
            label_column=data_args.label_column,
            max_train_samples=data_args.max_train_samples,
            max_eval_samples=data_args.max_eval_samples,
            preprocessing_num_workers=data_args.preprocessing_num_workers,
            cache_dir=data_args.dataset_cache_dir,
        )

    teacher_source = config.teacher_model_name_or_path
    shift_collator = None
    if teacher_source:
        probe = build_image_model(experiment_args.student, label_names, seed)
        teacher = load_teacher(teacher_source, probe, config.teacher_model_init_kwargs)
        teacher_processor = image_processor
        try:
            teacher_processor = image_processor_for(teacher_source)
        except (OSError, ValueError):  # a teacher saved without its processor: nothing to compare
            pass
        if teacher_processor.to_dict() != image_processor.to_dict():
            logger.warning(
                f"The teacher {teacher_source} comes with a different image processor than the student's; both models "
                "are fed the student's preprocessing."
            )
    else:
        teacher = build_image_model(experiment_args.teacher, label_names, seed)
        if experiment_args.teacher_max_shift:
            shift_collator = RandomShiftCollator(
                experiment_args.teacher_max_shift, fill=_fill_value(image_processor), seed=seed
            )

    return DistillationTask(
        task="image-classification",
        train_dataset=datasets["train"],
        eval_dataset=datasets["eval"],
        # InMemoryDataset serves whole batches: pass them through.
        data_collator=collate_batches,
        processing_class=image_processor,
        teacher=teacher,
        teacher_name=teacher_source or "trained here",
        train_teacher=not teacher_source,
        build_student=lambda teacher: build_image_model(experiment_args.student, label_names, seed),
        teacher_train_collator=shift_collator,
        in_memory=True,
    )


def run_image_distillation(
    data_args: DataArguments, experiment_args: ExperimentArguments, config: DistillationConfig
) -> DistillationReport | None:
    """
    Teacher, distilled student and CE-only baseline on an image-classification dataset, then the report
    ([`run_distillation`] with [`image_distillation_task`]).

    1. Load the dataset and decode + normalise it once with the student's image processor.
    2. Teacher: load `config.teacher_model_name_or_path`, or train `experiment_args.teacher` (plain cross-entropy,
       with random shifts when `teacher_max_shift > 0`).
    3. Student (KD): [`DistillationTrainer`] with `config`'s temperature, alpha and loss.
    4. Student (CE only): the same architecture, initial weights, seed, data order, epochs and schedule, trained on
       the labels alone (skipped with `skip_baseline`).
    5. Save the three models with their processor into `output_dir/{teacher,student_kd,student_ce}`, measure them on
       the test split and write `distillation_report.{md,json}` (+ `.png`) and the KD student's model card (pushed
       with `--push_to_hub`). Returns the report on the main process, `None` on the others.
    """
    return run_distillation(
        lambda state: image_distillation_task(state, data_args, experiment_args, config),
        data_args,
        experiment_args,
        config,
    )
