"""Generators of synthetic inputs for data-free distillation."""

from .configuration_generator import GeneratorConfig
from .modeling_generator import GeneratorModel

__all__ = ["GeneratorConfig", "GeneratorModel"]
