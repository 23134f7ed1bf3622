"""The experiment as stages: train a teacher, distil a student, train the baseline, measure, report, publish.

Each stage is a small function that takes what the previous ones produced ([`Trained`] models and the
[`ModelData`] they read) and returns its own result, so runs other than teacher -> student compose from the same
pieces: a chain teacher -> assistant -> student is `distil` twice, the second with the first's result as teacher.
[`run_distillation`] composes them for the examples' sequence; the examples write the same sequence out.

Every training of a run writes under `output_dir/<name>` (`teacher`, `student_kd`, `student_ce`), and the report
(`distillation_report.{md,json,png}`) is written last, atomically: its JSON marks a finished run.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate import PartialState
from transformers import PreTrainedModel, ProgressCallback, Trainer, set_seed
from transformers.trainer_utils import IntervalStrategy
from transformers.utils import logging

from ..data import InMemoryDataset, is_on_the_fly
from ..report.measure import (
    ModelResult,
    batch1_examples,
    dataset_labels,
    interleaved_latencies_ms,
    label_statistics,
    measure_model,
)
from ..report.metrics import compute_metrics_fn, metric_value
from ..report.report import (
    REPORT_JSON,
    REPORT_MD,
    REPORT_PNG,
    DistillationReport,
    lineage_of,
    run_settings,
    teacher_recipe,
    training_curve,
)
from ..training.configuration_distillation import DistillationConfig
from ..training.trainer import DistillationTrainer
from .arguments import DataArguments, ExperimentArguments
from .resume import finished_stage, train_or_resume
from .sharding import allow_another_trainer, gather_sharded_runs

logger = logging.get_logger(__name__)

TEACHER_DIR, STUDENT_KD_DIR, STUDENT_CE_DIR = "teacher", "student_kd", "student_ce"
# Teacher-assistant chains: the k-th assistant (from 1) is `assistant_<k>`; the student distilled straight from the
# teacher, for comparison with the chain's, is `student_kd_direct`.
ASSISTANT_PREFIX, STUDENT_KD_DIRECT_DIR = "assistant_", "student_kd_direct"


@dataclass
class ModelData:
    """What one model reads: its training and test splits, the collator that batches them, and the processor (image
    processor or tokenizer) saved beside it. A teacher with its own tokenizer has its own `ModelData`."""

    train_dataset: Any
    eval_dataset: Any
    data_collator: Callable | None
    processing_class: Any


@dataclass
class Trained:
    """A model a stage produced (or loaded), under the name the report gives it, with the data it reads."""

    name: str
    model: PreTrainedModel
    data: ModelData
    train_time_s: float | None = None
    log_history: list[dict] = field(default_factory=list)
    trainer: Trainer | None = None
    recipe: dict[str, Any] | None = None  # how it was trained, when a stage trained it on the labels
    # Whose inputs of its data's batches it reads (`hf_kd.batch.model_inputs`): "teacher" for a teacher measured on
    # the student's data, e.g. an ensemble whose members read their own `teacher_<k>_*` tokens.
    role: str = "student"


# ---------------------------------------------------------------------------------------------------------------------
# Before training (the checks of a run's start: hf_kd.runs.preparation)
# ---------------------------------------------------------------------------------------------------------------------


def stage_args(config: DistillationConfig, name: str, train_dataset: Any = None, **changes) -> DistillationConfig:
    """A copy of the run's arguments for one of its trainings, writing to `output_dir/name`.

    No training of the run creates a repository or pushes checkpoints: with --push_to_hub, the distilled student
    alone is published, once, by [`publish`]. The teacher's init kwargs were applied when it was loaded. Data served
    from memory keeps its columns (the Trainer's column removal iterates over rows; the in-memory columns are exactly
    the model's inputs), and so does data decoded on the fly (the removal would drop the image before the transform
    reads it)."""
    allow_another_trainer()  # under DeepSpeed, each stage's Trainer builds its own Accelerator
    args = copy.deepcopy(config)
    args.output_dir = str(Path(config.output_dir) / name)
    args.push_to_hub = False
    args.teacher_model_init_kwargs = None
    if isinstance(train_dataset, InMemoryDataset) or is_on_the_fly(train_dataset):
        args.remove_unused_columns = False
    for key, value in changes.items():
        setattr(args, key, value)
    return args


def compute_metrics_for(metric, extra_metrics: dict[str, Any] | None = None) -> Callable:
    """The Trainers' `compute_metrics`: the main metric, then the extra ones (by display name)."""
    return compute_metrics_fn(metric, list((extra_metrics or {}).values()))


# ---------------------------------------------------------------------------------------------------------------------
# Training stages
# ---------------------------------------------------------------------------------------------------------------------


STAGE_TITLES = {
    TEACHER_DIR: "the teacher, on the labels",
    STUDENT_KD_DIR: "the student, distilled from the teacher",
    STUDENT_CE_DIR: "the baseline: the same student on the labels alone",
}


class StageProgressCallback(ProgressCallback):
    """The Trainer's progress bar, labelled with the stage it counts (three identical `0/4690` bars in one run
    do not tell a user which model is training)."""

    def __init__(self, description: str):
        super().__init__()
        self.description = description

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None:
            self.training_bar.set_description(self.description)


def run_stage(name: str, trainer: Trainer, data: ModelData) -> Trained:
    """Announce the stage, run `trainer.train()` (its progress bar labelled with the stage's name) and keep what the
    report needs: the model, its training time and log."""
    PartialState().print(f"\n[hf_kd] Training {STAGE_TITLES.get(name, name)} ({name}) -> {trainer.args.output_dir}")
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(StageProgressCallback(name))
    train_time_s, log_history = train_or_resume(trainer)  # a finished stage is loaded, an interrupted one resumed
    return Trained(name, trainer.model, data, train_time_s, log_history, trainer)


def train_with_labels(
    name: str, model: PreTrainedModel, data: ModelData, config: DistillationConfig, compute_metrics: Callable,
    train_collator: Callable | None = None, **changes,
) -> Trained:  # fmt: skip
    """Train `model` on the labels alone (a plain Trainer, the model's own cross-entropy): the teacher, or the
    baseline. `train_collator` collates training batches only (e.g. random shifts); the model is then not evaluated
    during training, since the Trainer would collate the test split with it too."""
    args = stage_args(config, name, data.train_dataset, **changes)
    if train_collator is not None:
        args.eval_strategy = IntervalStrategy.NO
    set_seed(config.seed)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data.train_dataset,
        eval_dataset=None if train_collator is not None else data.eval_dataset,
        data_collator=train_collator or data.data_collator,
        processing_class=data.processing_class,
        compute_metrics=None if train_collator is not None else compute_metrics,
    )
    trained = run_stage(name, trainer, data)
    trained.recipe = teacher_recipe(args, **getattr(train_collator, "recipe", {}))
    return trained


def train_teacher(
    model: PreTrainedModel, data: ModelData, config: DistillationConfig, experiment_args: ExperimentArguments,
    compute_metrics: Callable, augmentation: Callable | None = None, name: str = TEACHER_DIR,
) -> Trained:  # fmt: skip
    """The teacher, trained here on the labels with its own epochs and learning rate (default: the student's);
    `name` is its stage's (`teacher_<k>` for the teachers of an ensemble)."""
    return train_with_labels(
        name, model, data, config, compute_metrics, augmentation,
        num_train_epochs=experiment_args.teacher_num_train_epochs or config.num_train_epochs,
        learning_rate=experiment_args.teacher_learning_rate or config.learning_rate,
    )  # fmt: skip


def train_baseline(student: PreTrainedModel, data: ModelData, config: DistillationConfig, compute_metrics) -> Trained:
    """The same student trained on the labels alone: what the user would get without distillation. Built with the
    same seed as the distilled one, it starts from the same weights and sees the same data order (the sampler is
    seeded from `args.seed`); only the loss differs."""
    return train_with_labels(STUDENT_CE_DIR, student, data, config, compute_metrics)


def distil(
    student: PreTrainedModel, teacher: Trained | PreTrainedModel, data: ModelData, config: DistillationConfig,
    compute_metrics: Callable, name: str = STUDENT_KD_DIR,
) -> Trained:  # fmt: skip
    """Distil `teacher` (a [`Trained`] stage result, e.g. an assistant, or a model) into `student` with a
    [`DistillationTrainer`]; its logits are computed once up front with `config.precompute_teacher_logits`."""
    teacher_model = teacher.model if isinstance(teacher, Trained) else teacher
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher_model,
        args=stage_args(config, name, data.train_dataset),
        train_dataset=data.train_dataset,
        eval_dataset=data.eval_dataset,
        data_collator=data.data_collator,
        processing_class=data.processing_class,
        compute_metrics=compute_metrics,
    )
    return run_stage(name, trainer, data)


def distil_assistants(
    teacher: Trained | PreTrainedModel | list, assistants: Sequence[PreTrainedModel], data: ModelData,
    config: DistillationConfig, compute_metrics: Callable,
) -> list[Trained]:  # fmt: skip
    """Teacher assistants (Mirzadeh et al., AAAI 2020): `assistants[0]` distilled from `teacher`, each next one from
    the previous one, each link an ordinary [`distil`] named `assistant_1`, `assistant_2`, ... A link already finished
    in the output directory is loaded, not trained again (`run_stage` resumes)."""
    links, previous = [], teacher
    for index, assistant in enumerate(assistants, start=1):
        previous = distil(assistant, previous, data, config, compute_metrics, name=f"{ASSISTANT_PREFIX}{index}")
        links.append(previous)
    return links


def distil_chain(
    student: PreTrainedModel, teacher: Trained | PreTrainedModel | list, assistants: Sequence[PreTrainedModel],
    data: ModelData, config: DistillationConfig, compute_metrics: Callable, name: str = STUDENT_KD_DIR,
) -> list[Trained]:  # fmt: skip
    """teacher -> assistants -> `student` ([`distil_assistants`], then `student` distilled from the last link): with
    no assistant, `distil(student, teacher, ...)`. Returns the assistants' results, then the student's."""
    links = distil_assistants(teacher, assistants, data, config, compute_metrics)
    return [*links, distil(student, links[-1] if links else teacher, data, config, compute_metrics, name=name)]


# ---------------------------------------------------------------------------------------------------------------------
# After training (main process)
# ---------------------------------------------------------------------------------------------------------------------


def measure(
    runs: Sequence[Trained], output_dir: str | os.PathLike, metric, batch_size: int, latency_examples: int,
    extra_metrics: dict[str, Any] | None = None, reference_predictions=None,
) -> tuple[list[ModelResult], dict[str, dict[str, float]]]:  # fmt: skip
    """Score each model on its test split from `output_dir/<name>` (saved there with its processor unless its
    stage already did) and time them together at batch 1 ([`interleaved_latencies_ms`]); the first run is the
    reference for `agreement_with_teacher`, unless `reference_predictions` are given (a black-box teacher's answers).
    Returns the results and the extra metrics' scores by model."""
    results, teacher_predictions = [], reference_predictions
    extra_scores = {metric_name: {} for metric_name in extra_metrics or {}}
    latencies = interleaved_latencies_ms([
        (run.model, batch1_examples(
            run.model, run.data.eval_dataset, latency_examples, run.data.data_collator, role=run.role
        ))
        for run in runs
    ])  # fmt: skip
    for run, latency in zip(runs, latencies):
        path = Path(output_dir) / run.name
        if finished_stage(path) is None:  # a finished stage saved its model and processor there already
            run.model.save_pretrained(path)
            run.data.processing_class.save_pretrained(path)
        result, predictions = measure_model(
            run.name, run.model, run.data.eval_dataset,
            lambda predictions, references: metric_value(metric, predictions, references),
            saved_path=path, output_dir=output_dir, train_time_s=run.train_time_s,
            teacher_predictions=teacher_predictions, batch_size=batch_size, data_collator=run.data.data_collator,
            role=run.role, latency=latency,
        )  # fmt: skip
        references = dataset_labels(run.data.eval_dataset)
        for metric_name, extra in (extra_metrics or {}).items():
            extra_scores[metric_name][run.name] = metric_value(extra, predictions, references)
        teacher_predictions = predictions if teacher_predictions is None else teacher_predictions
        results.append(result)
    return results, extra_scores


def write_report(
    runs: Sequence[Trained], results: list[ModelResult], task: str, teacher_name: str, metric,
    data_args: DataArguments, config: DistillationConfig, plot: bool = True, black_box: dict | None = None,
) -> DistillationReport:  # fmt: skip
    """Write `distillation_report.{md,json}` (+ `.png`) into `config.output_dir` and print it. `runs` (teacher first)
    give the teacher's recipe when the run trained it, the training curves and the test labels' statistics."""
    teacher, distilled = runs[0], runs[-1]
    teacher_logits = "precomputed" if config.precompute_teacher_logits else "live"
    if black_box:  # no teacher model: runs[0] is a student
        teacher, teacher_logits = Trained("teacher", None, distilled.data), "none: a black-box teacher's answers"
    report = DistillationReport(
        dataset=str(data_args.dataset_name),
        task=task,
        teacher=teacher_name,
        metric=metric.name,
        settings=run_settings(
            config, teacher_logits=teacher_logits, world_size=PartialState().num_processes, teacher=teacher.model
        ),
        models=results,
        teacher_recipe=teacher.recipe,
        training_curves={run.name: training_curve(run.log_history) for run in runs if run.log_history},
        lineage=lineage_of([run.name for run in runs], config),
        black_box=black_box,
        **label_statistics(dataset_labels(distilled.data.eval_dataset)),
    )
    report.save(config.output_dir, plot=plot)
    print("\n" + report.to_markdown())
    return report


def publish(distilled: Trained, data_args: DataArguments, config: DistillationConfig) -> None:
    """The distilled student's model card, with the report's table and plot; with --push_to_hub, the student's
    directory (not the teacher's or the baseline's) goes to the Hub, to --hub_model_id or, as in transformers'
    examples, a repository named after the output directory."""
    output_dir = Path(config.output_dir)
    hub_model_id = config.hub_model_id or output_dir.absolute().name
    card_kwargs = {"report": output_dir / REPORT_JSON, "eval_split": data_args.eval_split}
    if config.push_to_hub:
        distilled.trainer.args.hub_model_id = hub_model_id
        commit = distilled.trainer.push_to_hub(**card_kwargs)
        print(f"Distilled student pushed to {commit.commit_url}")
    else:
        distilled.trainer.create_model_card(model_name=hub_model_id.split("/")[-1], **card_kwargs)
    written = [output_dir / name for name in (REPORT_MD, REPORT_JSON, REPORT_PNG) if (output_dir / name).is_file()]
    written += sorted(path for path in output_dir.iterdir() if (path / "config.json").is_file())
    print(f"Written to {os.path.abspath(output_dir)}:\n" + "\n".join(f"  {path.name}" for path in written))


def report_run(
    runs: Sequence[Trained], task: str, teacher_name: str, metric, data_args: DataArguments,
    experiment_args: ExperimentArguments, config: DistillationConfig, extra_metrics: dict[str, Any] | None = None,
    black_box=None,
) -> DistillationReport | None:  # fmt: skip
    """The end of a run: on the main process, [`measure`] every model (teacher first, distilled student last), write
    the report, print the extra metrics, then [`publish`] the distilled student. Returns the report on the main
    process, `None` on the others (which wait for it). A black-box run ([`hf_kd.runs.black_box.BlackBoxData`]) has
    no teacher model: its students' agreement is with the teacher's answers, and the report says what it asked."""
    state = PartialState()
    runs = gather_sharded_runs(runs, config.output_dir)  # ZeRO-3 / FSDP: saved by all, reloaded whole on the main one
    report = None
    if state.is_main_process:
        results, extra_scores = measure(
            runs, config.output_dir, metric, config.per_device_eval_batch_size, experiment_args.latency_examples,
            extra_metrics, black_box.teacher_test_predictions if black_box else None,
        )  # fmt: skip
        report = write_report(runs, results, task, teacher_name, metric, data_args, config, experiment_args.plot,
                              black_box.summary if black_box else None)  # fmt: skip
        for metric_name, scores in extra_scores.items():
            print(f"{metric_name}: " + ", ".join(f"{name} {score:.4f}" for name, score in scores.items()))
        publish(runs[-1], data_args, config)
    state.wait_for_everyone()
    return report
