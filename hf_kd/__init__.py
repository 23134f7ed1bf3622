"""hf_kd: knowledge distillation for the Hugging Face stack."""

__version__ = "0.1.0"

from .configuration_distillation import DistillationConfig
from .losses import (
    distillation_loss,
    hard_label_loss,
    logit_mse_loss,
    reverse_kl_loss,
    soft_loss,
    soft_target_loss,
)
from .teacher import add_teacher_logits, freeze, load_teacher, prepare_teacher, teacher_fingerprint
from .trainer import DistillationTrainer

__all__ = [
    "DistillationConfig",
    "DistillationTrainer",
    "add_teacher_logits",
    "distillation_loss",
    "freeze",
    "hard_label_loss",
    "load_teacher",
    "logit_mse_loss",
    "prepare_teacher",
    "reverse_kl_loss",
    "soft_loss",
    "soft_target_loss",
    "teacher_fingerprint",
]
