"""MLP image classifiers (the MNIST reference teacher and student)."""

from .configuration_mlp import MLPConfig
from .modeling_mlp import MLPForImageClassification, MLPModel, MLPPreTrainedModel

__all__ = ["MLPConfig", "MLPForImageClassification", "MLPModel", "MLPPreTrainedModel"]
