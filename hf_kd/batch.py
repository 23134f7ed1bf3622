"""The batch convention: which keys of a batch (or columns of a dataset) belong to whom.

A distillation batch carries, beside the student's own inputs:

- `labels`: the ground truth, for the hard-label term;
- `teacher_<name>`: the teacher's own inputs (e.g. `teacher_input_ids` from the teacher's tokenizer), fed to the
  teacher with the prefix removed; absent when both models read the same inputs;
- `teacher_logits`: the teacher's outputs when they are already known (computed once up front, or by an API): the
  teacher is then not run for that batch;
- `teacher_feature_<i>`: teacher features computed once with the logits (vectors per example, for a feature term);
- a black-box teacher's answers, when all it gives is answers (an API; see `hf_kd.teacher.remote`): `teacher_probs`
  (probabilities over the classes), `teacher_top_k_indices` + `teacher_top_k_probs` (its k best classes and their
  probabilities), or `teacher_label` (its argmax only). The loss is chosen from the column present
  (`hf_kd.losses.partial`); a row without a ground-truth label (`labels == -100`) is then a transfer example.

An ensemble of teachers ([`hf_kd.ensemble.TeacherEnsemble`]) is one teacher to this convention; its member `k` reads
its own inputs `teacher_<k>_<name>` (e.g. `teacher_1_input_ids` from the second teacher's tokenizer) when the batch has
any, otherwise the ensemble's shared inputs (`teacher_<name>`, or the student's). See [`member_inputs`].

This is the only module that knows these names. The trainer, the collators, the precompute path and the report ask it
to split a batch or a column list instead of testing prefixes themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

LABELS = "labels"
TEACHER_PREFIX = "teacher_"
# The teacher's outputs, when known in advance: its logits, and features cached with them (`teacher_feature_<i>`).
TEACHER_LOGITS = "teacher_logits"
# A black-box teacher's answers, by column, with the name each has in `hf_kd.losses.partial`'s answers.
TEACHER_PROBS = "teacher_probs"
TEACHER_TOP_K_INDICES = "teacher_top_k_indices"
TEACHER_TOP_K_PROBS = "teacher_top_k_probs"
TEACHER_LABEL = "teacher_label"
ANSWER_COLUMNS = {
    TEACHER_PROBS: "probs",
    TEACHER_TOP_K_INDICES: "top_k_indices",
    TEACHER_TOP_K_PROBS: "top_k_probs",
    TEACHER_LABEL: "labels",
}
TEACHER_TARGETS = (TEACHER_LOGITS, *ANSWER_COLUMNS)
TEACHER_FEATURE_PREFIX = "teacher_feature_"


def teacher_feature_column(index: int) -> str:
    """The column of the `index`-th teacher feature cached with the logits: `teacher_feature_<index>`."""
    return f"{TEACHER_FEATURE_PREFIX}{index}"


def is_teacher_target(name: str) -> bool:
    """True for a column holding the teacher's outputs (`teacher_logits`, `teacher_feature_<i>`)."""
    return name in TEACHER_TARGETS or (
        name.startswith(TEACHER_FEATURE_PREFIX) and name[len(TEACHER_FEATURE_PREFIX) :].isdigit()
    )


def answer_columns(columns: Iterable[str]) -> list[str]:
    """The black-box answer columns among `columns` (`teacher_probs`, `teacher_top_k_*`, `teacher_label`)."""
    return [name for name in columns if name in ANSWER_COLUMNS]


def is_teacher_input(name: str) -> bool:
    """True for a column holding the teacher's own inputs (`teacher_input_ids`, ...)."""
    return name.startswith(TEACHER_PREFIX) and not is_teacher_target(name)


def is_student_input(name: str) -> bool:
    """True for a column the student reads: everything that is neither the labels nor the teacher's."""
    return name != LABELS and not name.startswith(TEACHER_PREFIX)


def member_index(name: str) -> int | None:
    """`k` for an ensemble member's input name without the teacher prefix (`"1_input_ids"` -> 1), else `None`."""
    head, sep, rest = name.partition("_")
    return int(head) if sep and rest and head.isdigit() else None


def member_inputs(inputs: Mapping[str, Any], index: int) -> dict[str, Any]:
    """Member `index`'s inputs among an ensemble's (teacher prefix already removed): its own `<index>_<name>` ones
    with the index removed when there are any, otherwise the shared ones (the names without a member index)."""
    own = {name.partition("_")[2]: value for name, value in inputs.items() if member_index(name) == index}
    return own or {name: value for name, value in inputs.items() if member_index(name) is None}


def teacher_column(name: str, member: int | None = None) -> str:
    """The column of the teacher's input `name`: `teacher_<name>`, or ensemble member `member`'s own
    `teacher_<member>_<name>` (the names a tokenizer's outputs get for one teacher, or for each of several)."""
    return TEACHER_PREFIX + (name if member is None else f"{member}_{name}")


def inputs_by_member(teacher_inputs: Mapping[str, Any]) -> dict[int | None, dict[str, Any]]:
    """The teacher's inputs (prefix removed) grouped by owner: `None` for the shared ones (`input_ids`), `k` for
    member `k`'s own (`k_input_ids`, the index removed), so that each group can be padded with its own tokenizer."""
    groups: dict[int | None, dict[str, Any]] = {}
    for name, value in teacher_inputs.items():
        member = member_index(name)
        groups.setdefault(member, {})[name if member is None else name.partition("_")[2]] = value
    return groups


def _only_member_inputs(teacher_names: Iterable[str]) -> bool:
    names = list(teacher_names)
    return bool(names) and all(member_index(name) is not None for name in names)


def teacher_input_columns(columns: Iterable[str]) -> list[str]:
    """The teacher's own input columns (with their prefix), in order. When they are all an ensemble member's
    (`teacher_<k>_*`), the student's inputs come too: the members without inputs of their own share them."""
    columns = list(columns)
    own = [name for name in columns if is_teacher_input(name)]
    if _only_member_inputs(strip_teacher_prefix(name) for name in own):
        return [name for name in columns if is_student_input(name) or name in own]
    return own


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

    @property
    def teacher_answers(self) -> dict[str, Any] | None:
        """A black-box teacher's answers, keyed as `hf_kd.losses.partial` reads them (`probs`, `top_k_indices` +
        `top_k_probs`, `labels`); `None` when the batch carries none."""
        answers = {ANSWER_COLUMNS[name]: value for name, value in self.teacher_targets.items() if name in ANSWER_COLUMNS}
        return answers or None

    def inputs_for_teacher(self) -> dict[str, Any]:
        """What the teacher's `forward` takes: its own inputs, or the student's when it has none (with, for an
        ensemble whose teacher inputs are all its members' own, the student's as the shared ones)."""
        if _only_member_inputs(self.teacher_inputs):
            return {**self.student_inputs, **self.teacher_inputs}
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
