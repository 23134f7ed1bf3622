"""Reference models of hf_kd: the MNIST MLPs and CIFAR-10 CNNs as `transformers` models.

Importing this package registers them with the Auto classes:

- `AutoConfig`: model types `"hf_kd_mlp"` and `"hf_kd_cnn"`;
- `AutoModel`: [`MLPModel`], [`CNNModel`], the classifiers' feature layers without the classifier (same parameter
  names, so either loads from the other's checkpoint);
- `AutoModelForImageClassification`: [`MLPForImageClassification`], [`CNNForImageClassification`];
- `AutoImageProcessor`: [`HfKdImageProcessor`] for both.

It also calls `register_for_auto_class` on each, so `save_pretrained` copies the configuration, modeling and image
processing files next to the weights and records them in `auto_map` (under the Auto class of the saved model's own
class): a saved (or pushed) model then loads with `trust_remote_code=True` where hf_kd is not installed.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
)
from transformers.models.auto.video_processing_auto import AutoVideoProcessor

from .cnn import CNNConfig, CNNForImageClassification, CNNModel, CNNPreTrainedModel
from .generator import GeneratorConfig, GeneratorModel
from .image_processing_hf_kd import HfKdImageProcessor
from .mlp import MLPConfig, MLPForImageClassification, MLPModel, MLPPreTrainedModel
from .presets import (
    CIFAR10_LABELS,
    CIFAR10_PROCESSOR_KWARGS,
    MNIST_LABELS,
    MNIST_PROCESSOR_KWARGS,
    PRESET_NAMES,
    config_from_preset,
    image_processor_for_preset,
    model_from_preset,
    preset_config_kwargs,
)

# `exist_ok`: a module reload (or a second copy of the package) must not fail on the existing registration.
for _config_class, _base_class, _model_class in (
    (MLPConfig, MLPModel, MLPForImageClassification),
    (CNNConfig, CNNModel, CNNForImageClassification),
):
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    AutoModel.register(_config_class, _base_class, exist_ok=True)
    AutoModelForImageClassification.register(_config_class, _model_class, exist_ok=True)
    # Under both backend names: the processor needs only PIL and NumPy, and where torchvision is installed,
    # `AutoImageProcessor` asks for the "torchvision" backend first and would warn about falling back to "pil".
    AutoImageProcessor.register(
        _config_class,
        image_processor_classes={"pil": HfKdImageProcessor, "torchvision": HfKdImageProcessor},
        exist_ok=True,
    )
    # No video processor, registered as an empty mapping on purpose. The image-classification pipeline also tries
    # `AutoVideoProcessor`, which turns the processor's `auto_map` entry into a made-up `HfKdVideoProcessor`; with no
    # local registration it asks "Do you wish to run the custom code? [y/N]" on the terminal (15 s timeout) before
    # failing. Registered, it fails at once and quietly, and the pipeline carries on without one. (The module's class,
    # not `transformers.AutoVideoProcessor`, which is a placeholder that raises where torchvision is missing.)
    AutoVideoProcessor.register(_config_class, video_processor_classes={}, exist_ok=True)
    _config_class.register_for_auto_class("AutoConfig")
    _base_class.register_for_auto_class("AutoModel")
    _model_class.register_for_auto_class("AutoModelForImageClassification")
HfKdImageProcessor.register_for_auto_class("AutoImageProcessor")
# The data-free generator: loads with AutoModel.from_pretrained (in-library only; it is not a classifier).
AutoConfig.register(GeneratorConfig.model_type, GeneratorConfig, exist_ok=True)
AutoModel.register(GeneratorConfig, GeneratorModel, exist_ok=True)
del _config_class, _base_class, _model_class


__all__ = [
    "CIFAR10_LABELS",
    "CIFAR10_PROCESSOR_KWARGS",
    "CNNConfig",
    "CNNForImageClassification",
    "CNNModel",
    "CNNPreTrainedModel",
    "GeneratorConfig",
    "GeneratorModel",
    "HfKdImageProcessor",
    "MLPConfig",
    "MLPForImageClassification",
    "MLPModel",
    "MLPPreTrainedModel",
    "MNIST_LABELS",
    "MNIST_PROCESSOR_KWARGS",
    "PRESET_NAMES",
    "config_from_preset",
    "image_processor_for_preset",
    "model_from_preset",
    "preset_config_kwargs",
]
