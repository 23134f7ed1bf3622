"""hf_kd: knowledge distillation for the Hugging Face stack."""

__version__ = "0.1.0"

from . import models
from .configuration_distillation import DistillationConfig
from .data import InMemoryDataset, RandomShiftCollator, collate_batches, load_image_classification_dataset
from .losses import (
    distillation_loss,
    hard_label_loss,
    logit_mse_loss,
    reverse_kl_loss,
    soft_loss,
    soft_target_loss,
)
from .teacher import add_teacher_logits, freeze, load_teacher, prepare_teacher, teacher_fingerprint
from .models import (
    PRESET_NAMES,
    CNNConfig,
    CNNForImageClassification,
    HfKdImageProcessor,
    MLPConfig,
    MLPForImageClassification,
    config_from_preset,
    image_processor_for_preset,
    model_from_preset,
)
from .report import DistillationReport, ModelResult
from .text import DataCollatorWithTeacherPadding, derive_student, tokenize_dataset
from .trainer import DistillationTrainer

__all__ = [
    "PRESET_NAMES",
    "CNNConfig",
    "DistillationReport",
    "ModelResult",
    "RandomShiftCollator",
    "load_image_classification_dataset",
    "CNNForImageClassification",
    "DataCollatorWithTeacherPadding",
    "HfKdImageProcessor",
    "InMemoryDataset",
    "MLPConfig",
    "MLPForImageClassification",
    "collate_batches",
    "config_from_preset",
    "derive_student",
    "image_processor_for_preset",
    "model_from_preset",
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
    "tokenize_dataset",
]
