"""Mixed precision (bf16 autocast on the CPU) and a teacher held in reduced precision."""

import copy

import pytest
import torch
from conftest import make_student
from test_trainer import agreement, config

from hf_kd import DistillationTrainer


def train_and_score(tmp_path, teacher, train, test, **overrides):
    """Distil a copy of `teacher` (the trainer may cast it), score against the float32 original. Also returns the
    dtypes the student's layers computed in during training (read by a forward hook)."""
    student = make_student()
    trainer = DistillationTrainer(model=student, teacher_model=copy.deepcopy(teacher), train_dataset=train,
                                  args=config(tmp_path, alpha=1.0, num_train_epochs=8, **overrides))
    computed = set()
    hooks = [m.register_forward_hook(lambda m, i, out: computed.add(out.dtype)) for m in student.modules()
             if isinstance(m, torch.nn.Linear)]  # fmt: skip
    trainer.train()
    for hook in hooks:
        hook.remove()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    trainer.computed_dtypes = computed
    return agreement(student, teacher, test), losses, trainer


def test_bf16_mixed_precision_on_cpu_matches_fp32(tmp_path, tiny_task):
    teacher, train, test = tiny_task
    fp32_agreement, _, _ = train_and_score(tmp_path / "fp32", teacher, train, test)
    bf16_agreement, losses, trainer = train_and_score(tmp_path / "bf16", teacher, train, test, bf16=True, use_cpu=True)
    assert trainer.accelerator.mixed_precision == "bf16"
    assert trainer.computed_dtypes == {torch.bfloat16}  # autocast really ran the student's matmuls in bf16
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert bf16_agreement >= fp32_agreement - 0.05, (fp32_agreement, bf16_agreement)
    # The student's weights stay float32 (autocast computes in bf16, the master weights do not change dtype).
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_teacher_held_in_reduced_precision(tmp_path, tiny_task, dtype):
    teacher, train, test = tiny_task
    score, losses, trainer = train_and_score(tmp_path, teacher, train, test, teacher_dtype=dtype)
    assert all(p.dtype == getattr(torch, dtype) for p in trainer.teacher_model.parameters())
    assert trainer.computed_dtypes == {torch.float32}  # the student itself trains in float32
    assert all(torch.isfinite(torch.tensor(losses)))
    # The reduced-precision teacher's logits reach the loss as float32 and the student still learns the teacher.
    assert score >= 0.93


def test_teacher_dtype_is_validated(tmp_path):
    with pytest.raises(ValueError, match="teacher_dtype must be one of .*'int8'"):
        config(tmp_path, teacher_dtype="int8")
