"""What a modality prepares for a run ([`DistillationSetup`], built by [`hf_kd.runs.recipes`]), and the one-teacher
sequence as one call ([`run_distillation`]: teacher -> distilled student -> baseline -> measure -> report -> card), for
scripts and studies; the examples write the same sequence out, step by step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedModel

from ..report.report import DistillationReport
from ..training.configuration_distillation import DistillationConfig
from .arguments import DataArguments, ExperimentArguments
from .experiment import (
    TEACHER_DIR,
    ModelData,
    Trained,
    compute_metrics_for,
    distil,
    report_run,
    train_baseline,
    train_teacher,
)


@dataclass
class TeacherSetup:
    """One of several teachers as a recipe prepares it (see [`DistillationSetup.teachers`]).

    Args:
        name (`str`): Its stage and report row, `teacher_<k>`.
        model (`PreTrainedModel`): Loaded, or to be trained here first (`train`).
        data ([`ModelData`]): What it reads when trained and measured alone: its own tokenization.
        source (`str`): Where it came from, as the report says it.
        train (`bool`): Whether the run trains it on the labels before distilling (e.g. its head is new).
    """

    name: str
    model: PreTrainedModel
    data: ModelData
    source: str
    train: bool = False


@dataclass
class DistillationSetup:
    """What a modality prepares for [`run_distillation`] (see [`hf_kd.runs.recipes`]).

    Args:
        task (`str`): The report's task, `"image-classification"` or `"text-classification"`.
        student_data, teacher_data ([`ModelData`]): What each model reads; the same object when they read the same
            inputs. With two tokenizers, the student's data also carries the teacher's own inputs (`teacher_*`).
        teacher (`PreTrainedModel`): Loaded, or freshly built to be trained here (`teacher_needs_training`).
        teacher_name (`str`): Where the teacher came from, as the report says it.
        build_student (`Callable`): Builds the student given the ready teacher (a derived student needs it). Called
            for the distilled student and the baseline, which must come out identical: seed inside.
        teacher_augmentation (`Callable`, *optional*): Collates the teacher's training batches (random shifts).
        extra_metrics (`dict`): Metrics logged and printed beside the main one, by display name.
        teachers (`list[TeacherSetup]`): Every teacher when there are several (distilled as one ensemble, each reading
            its own `teacher_<k>_*` inputs of the student's data); `teacher`, `teacher_data` and `teacher_needs_training` are
            then the first one's, from which a derived student is built. Empty for one teacher.
    """

    task: str
    student_data: ModelData
    teacher_data: ModelData
    teacher: PreTrainedModel
    teacher_name: str
    teacher_needs_training: bool
    build_student: Callable[[PreTrainedModel], PreTrainedModel]
    teacher_augmentation: Callable | None = None
    extra_metrics: dict[str, Any] = field(default_factory=dict)
    teachers: list[TeacherSetup] = field(default_factory=list)


def prepare_teachers(
    setup: DistillationSetup, config: DistillationConfig, experiment_args: ExperimentArguments, compute_metrics: Callable
) -> list[Trained]:  # fmt: skip
    """Every teacher of `setup` ready, in eval mode: `[teacher]` for one, `[teacher_0, teacher_1, ...]` for several
    ([`DistillationSetup.teachers`]); each trained here on the labels first when its setup says so (its own stage)."""
    teachers = setup.teachers or [
        TeacherSetup(TEACHER_DIR, setup.teacher, setup.teacher_data, setup.teacher_name, setup.teacher_needs_training)
    ]
    ready = []
    for teacher in teachers:
        augmentation = setup.teacher_augmentation if len(teachers) == 1 else None
        trained = Trained(teacher.name, teacher.model, teacher.data)
        if teacher.train:
            trained = train_teacher(
                teacher.model, teacher.data, config, experiment_args, compute_metrics, augmentation, name=teacher.name
            )
        trained.model.eval()
        ready.append(trained)
    return ready


def run_distillation(
    setup: DistillationSetup, metric, data_args: DataArguments, experiment_args: ExperimentArguments,
    config: DistillationConfig,
) -> DistillationReport | None:  # fmt: skip
    """Teacher (trained or loaded) -> distilled student -> CE-only baseline -> measure -> report -> card / push.
    Returns the report on the main process, `None` on the others."""
    compute_metrics = compute_metrics_for(metric, setup.extra_metrics)
    if len(setup.teachers) > 1:
        raise ValueError(
            "run_distillation distils one teacher; several (an ensemble) are run by the examples "
            "(examples/distill_text_classification.py, examples/distill_image_classification.py)."
        )
    (teacher,) = prepare_teachers(setup, config, experiment_args, compute_metrics)
    data = setup.student_data
    distilled = distil(setup.build_student(teacher.model), teacher, data, config, compute_metrics)
    runs = [teacher]
    if not experiment_args.skip_baseline:
        runs.append(train_baseline(setup.build_student(teacher.model), data, config, compute_metrics))
    runs.append(distilled)
    return report_run(
        runs, setup.task, setup.teacher_name, metric, data_args, experiment_args, config, setup.extra_metrics
    )
