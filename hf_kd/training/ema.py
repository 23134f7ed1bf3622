"""A moving-average teacher for self-distillation: the teacher is an exponential moving average of the student.

[`EMATeacherCallback`] updates `teacher = decay * teacher + (1 - decay) * student` after every optimizer step (as
TRL's `SyncRefModelCallback` syncs a reference model), and the [`DistillationTrainer`] distils that teacher into the
student with its usual loss. The teacher starts as a copy of the student ([`EMATeacherCallback.from_student`]).
"""

from __future__ import annotations

import copy

import torch
from accelerate.utils import extract_model_from_parallel
from torch import nn
from transformers import TrainerCallback

from ..batch import TEACHER_LOGITS

_PRECOMPUTE_REASON = (
    "the EMA teacher changes after every optimizer step, so logits computed once (or carried in a teacher_logits "
    "column) would be those of the student's initial weights, not the moving average"
)


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """In place: every floating parameter and buffer `t <- decay * t + (1 - decay) * s`; other buffers (counters)
    are copied. The two models must have the same architecture."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.lerp_(s.to(t.dtype), 1.0 - decay)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.lerp_(s.to(t.dtype), 1.0 - decay) if t.is_floating_point() else t.copy_(s)


class EMATeacherCallback(TrainerCallback):
    """Keep `teacher` the exponential moving average of the trained model: after every `sync_steps`-th optimizer
    step, `teacher = decay * teacher + (1 - decay) * student`.

    Use it with a [`DistillationTrainer`] whose `teacher_model` is this callback's teacher (see [`from_student`]):

    ```python
    ema = EMATeacherCallback.from_student(student, decay=0.99)
    trainer = DistillationTrainer(model=student, teacher_model=ema.teacher, args=args, callbacks=[ema], ...)
    ```

    Precomputed teacher logits are refused (before they are computed): the teacher changes at every step. The
    teacher is not saved in checkpoints, so a resumed run is refused rather than restarted from a wrong teacher.

    Args:
        teacher (`nn.Module`): the moving average, of the student's architecture; updated in place.
        decay (`float`): weight of the old average, in `[0, 1)`; the teacher averages over about `1 / (1 - decay)`
            steps.
        sync_steps (`int`): update every this many optimizer steps.
    """

    def __init__(self, teacher: nn.Module, decay: float = 0.99, sync_steps: int = 1):
        if not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be a number in [0, 1), got {decay!r}.")
        if not isinstance(sync_steps, int) or sync_steps < 1:
            raise ValueError(f"sync_steps must be an integer >= 1, got {sync_steps!r}.")
        self.teacher, self.decay, self.sync_steps = teacher, float(decay), sync_steps

    @classmethod
    def from_student(cls, student: nn.Module, decay: float = 0.99, sync_steps: int = 1) -> EMATeacherCallback:
        """A callback whose teacher starts as a copy of `student`."""
        return cls(copy.deepcopy(student), decay, sync_steps)

    def on_init_end(self, args, state, control, **kwargs):
        # Called inside Trainer.__init__, before DistillationTrainer precomputes anything.
        if getattr(args, "precompute_teacher_logits", False):
            raise ValueError(
                f"precompute_teacher_logits=True cannot be used with an EMA teacher: {_PRECOMPUTE_REASON}."
            )

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        dataset = getattr(train_dataloader, "dataset", None)
        if TEACHER_LOGITS in (getattr(dataset, "column_names", None) or []):
            raise ValueError(f"The train dataset has a {TEACHER_LOGITS} column, refused with an EMA teacher: "
                             f"{_PRECOMPUTE_REASON}. Remove the column.")  # fmt: skip
        if state.global_step > 0:
            raise ValueError(
                "Resuming is not supported with an EMA teacher: checkpoints hold the student only, and restarting the "
                "average from the resumed student would change the run. Train from the start."
            )

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.sync_steps == 0:
            ema_update_(self.teacher, extract_model_from_parallel(model), self.decay)
