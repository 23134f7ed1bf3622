"""The batch convention: which keys of a batch (or columns of a dataset) belong to whom.

A distillation batch carries, beside the student's own inputs:

- `labels`: the ground truth, for the hard-label term;
- `teacher_<name>`: the teacher's own inputs (e.g. `teacher_input_ids` from the teacher's tokenizer), fed to the
  teacher with the prefix removed; absent when both models read the same inputs;
- `teacher_logits`: the teacher's outputs when they are already known (computed once up front, or by an API): the
  teacher is then not run for that batch.

This is the only module that knows these names. The trainer, the collators, the precompute path and the report ask it
to split a batch or a column list instead of testing prefixes themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

LABELS = "labels"
TEACHER_PREFIX = "teacher_"
# The teacher's outputs, when known in advance. One name today (logits); cached features would join it here.
TEACHER_LOGITS = "teacher_logits"
TEACHER_TARGETS = (TEACHER_LOGITS,)


def is_teacher_target(name: str) -> bool:
    """True for a column holding the teacher's outputs (`teacher_logits`)."""
    return name in TEACHER_TARGETS


def is_teacher_input(name: str) -> bool:
    """True for a column holding the teacher's own inputs (`teacher_input_ids`, ...)."""
    return name.startswith(TEACHER_PREFIX) and not is_teacher_target(name)


def is_student_input(name: str) -> bool:
    """True for a column the student reads: everything that is neither the labels nor the teacher's."""
    return name != LABELS and not name.startswith(TEACHER_PREFIX)


def teacher_input_columns(columns: Iterable[str]) -> list[str]:
    """The teacher's own input columns (with their prefix), in order."""
    return [name for name in columns if is_teacher_input(name)]


def distillation_columns(columns: Iterable[str]) -> list[str]:
    """The columns a distillation batch needs beyond the student's forward arguments: the teacher's inputs and
    targets (kept when the Trainer removes the columns the student's `forward` does not take)."""
    return [name for name in columns if name.startswith(TEACHER_PREFIX)]


def strip_teacher_prefix(name: str) -> str:
    return name[len(TEACHER_PREFIX) :]


@dataclass
class DistillationBatch:
    """A batch split by owner. `teacher_inputs` is empty when the teacher reads the student's inputs."""

    student_inputs: dict[str, Any] = field(default_factory=dict)
    teacher_inputs: dict[str, Any] = field(default_factory=dict)
    teacher_targets: dict[str, Any] = field(default_factory=dict)
    labels: Any = None

    @property
    def teacher_logits(self):
        return self.teacher_targets.get(TEACHER_LOGITS)

    def inputs_for_teacher(self) -> dict[str, Any]:
        """What the teacher's `forward` takes: its own inputs, or the student's when it has none."""
        return self.teacher_inputs or self.student_inputs


def split_batch(batch: Mapping[str, Any]) -> DistillationBatch:
    """Split a collated batch (or a dataset row) into student inputs, teacher inputs (prefix removed), teacher
    targets and labels."""
    split = DistillationBatch(labels=batch.get(LABELS))
    for key, value in batch.items():
        if key == LABELS:
            continue
        if is_teacher_target(key):
            split.teacher_targets[key] = value
        elif key.startswith(TEACHER_PREFIX):
            split.teacher_inputs[strip_teacher_prefix(key)] = value
        else:
            split.student_inputs[key] = value
    return split


def model_inputs(batch: Mapping[str, Any], role: str = "student") -> dict[str, Any]:
    """One model's inputs from a batch: `role="student"` (every key but the labels and the teacher's) or
    `role="teacher"` (its own `teacher_*` inputs, prefix removed; the student's when it has none)."""
    split = split_batch(batch)
    if role == "student":
        return split.student_inputs
    if role == "teacher":
        return split.inputs_for_teacher()
    raise ValueError(f"role must be 'student' or 'teacher', got {role!r}.")
