"""hf_kd: knowledge distillation for the Hugging Face stack.

The names below are what a user calls; each is imported on first use (PEP 562), so `import hf_kd` does not pay for
transformers' Trainer, datasets and torch until they are needed. Everything else stays importable from its module
(`hf_kd.losses.logit`, `hf_kd.teacher.loading`, `hf_kd.batch`, `hf_kd.data`, ...; ARCHITECTURE.md maps them).
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hf_kd")  # declared once, in setup.py
except PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0.0.0"

_EXPORTS = {
    "DistillationConfig": "training.configuration_distillation",
    "DistillationTrainer": "training.trainer",
    "distillation_loss": "losses.logit",
    "add_teacher_logits": "teacher.precompute",
    "load_teacher": "teacher.loading",
    "annotate_with_teacher": "teacher.annotate",
    "teacher_from_url": "teacher.remote",
    "DistillationReport": "report.report",
    "InMemoryDataset": "data",
    "RandomShiftCollator": "data",
    "DataCollatorWithTeacherPadding": "data",
    "load_image_classification_dataset": "data",
    "tokenize_dataset": "data",
    "derive_student": "models.student",
    "TeacherEnsemble": "teacher.ensemble",
    "MutualLearningTrainer": "training.mutual",
    "MutualLearningConfig": "training.mutual",
    "EMATeacherCallback": "training.ema",
    "model_from_preset": "models",
    "image_processor_for_preset": "models",
    "MLPForImageClassification": "models",
    "CNNForImageClassification": "models",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
