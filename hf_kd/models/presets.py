# Copyright 2025 The hf_kd authors. Licensed under the Apache License, Version 2.0.
"""The reference teacher and student architectures, by name, with the image processors of their datasets."""

from transformers import PreTrainedConfig, PreTrainedModel

from .cnn.configuration_cnn import CNNConfig
from .cnn.modeling_cnn import CNNForImageClassification
from .image_processing_hf_kd import HfKdImageProcessor
from .mlp.configuration_mlp import MLPConfig
from .mlp.modeling_mlp import MLPForImageClassification

MNIST_LABELS = [str(digit) for digit in range(10)]
CIFAR10_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# Keyword arguments of `HfKdImageProcessor` for each dataset. The means and standard deviations are the usual
# per-channel statistics of the training splits.
MNIST_PROCESSOR_KWARGS = {
    "do_convert_grayscale": True,
    "do_convert_rgb": False,
    "size": {"height": 28, "width": 28},
    "image_mean": [0.1307],
    "image_std": [0.3081],
}
CIFAR10_PROCESSOR_KWARGS = {
    "do_convert_grayscale": False,
    "do_convert_rgb": True,
    "size": {"height": 32, "width": 32},
    "image_mean": [0.4914, 0.4822, 0.4465],
    "image_std": [0.2470, 0.2435, 0.2616],
}


def _labels(names: list[str]) -> dict:
    return {"id2label": dict(enumerate(names)), "label2id": {name: index for index, name in enumerate(names)}}


# name -> (config class, config kwargs, processor kwargs). Architectures from DESIGN.md.
_PRESETS = {
    # 784 -> 400 -> ReLU -> 100 -> ReLU -> 10: 355,110 parameters.
    "mnist-mlp-teacher": (
        MLPConfig,
        {"num_channels": 1, "image_size": 28, "hidden_sizes": [400, 100], "dropout": 0.0, **_labels(MNIST_LABELS)},
        MNIST_PROCESSOR_KWARGS,
    ),
    # 784 -> 100 -> ReLU -> 10: 79,510 parameters.
    "mnist-mlp-student": (
        MLPConfig,
        {"num_channels": 1, "image_size": 28, "hidden_sizes": [100], "dropout": 0.0, **_labels(MNIST_LABELS)},
        MNIST_PROCESSOR_KWARGS,
    ),
    # conv 3->128, conv 128->64, pool, conv 64->64, conv 64->32, pool, FC 2048->512, dropout 0.1, 512->10:
    # 1,186,986 parameters.
    "cifar10-cnn-teacher": (
        CNNConfig,
        {
            "num_channels": 3,
            "image_size": 32,
            "conv_channels": [128, 64, 64, 32],
            "pool_after": [1, 3],
            "kernel_size": 3,
            "classifier_hidden_sizes": [512],
            "dropout": 0.1,
            **_labels(CIFAR10_LABELS),
        },
        CIFAR10_PROCESSOR_KWARGS,
    ),
    # conv 3->16, pool, conv 16->16, pool, FC 1024->256, dropout 0.1, 256->10: 267,738 parameters.
    "cifar10-cnn-student": (
        CNNConfig,
        {
            "num_channels": 3,
            "image_size": 32,
            "conv_channels": [16, 16],
            "pool_after": [0, 1],
            "kernel_size": 3,
            "classifier_hidden_sizes": [256],
            "dropout": 0.1,
            **_labels(CIFAR10_LABELS),
        },
        CIFAR10_PROCESSOR_KWARGS,
    ),
}

PRESET_NAMES: tuple[str, ...] = tuple(_PRESETS)
"""Names accepted by [`config_from_preset`], [`model_from_preset`] and [`image_processor_for_preset`]."""

_MODEL_CLASSES = {MLPConfig: MLPForImageClassification, CNNConfig: CNNForImageClassification}


def _get_preset(name: str) -> tuple:
    try:
        return _PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown preset {name!r}. Valid presets: {', '.join(PRESET_NAMES)}.") from None


def _copy_values(kwargs: dict) -> dict:
    # The presets' lists and dicts are shared: callers (and the configs built from them) must not alter them.
    return {key: (value.copy() if isinstance(value, (list, dict)) else value) for key, value in kwargs.items()}


def preset_config_kwargs(name: str) -> dict:
    """
    The configuration keyword arguments of a preset (a copy, safe to modify).

    Raises:
        `ValueError`: if `name` is not one of [`PRESET_NAMES`].
    """
    _, config_kwargs, _ = _get_preset(name)
    return _copy_values(config_kwargs)


def config_from_preset(name: str, **overrides) -> PreTrainedConfig:
    """
    Build the configuration of a reference architecture.

    Args:
        name (`str`):
            One of `"mnist-mlp-teacher"`, `"mnist-mlp-student"`, `"cifar10-cnn-teacher"`, `"cifar10-cnn-student"`.
        overrides:
            Configuration fields replacing the preset's, e.g. `dropout=0.2` or `num_labels=100` (which also
            replaces the preset's label names).

    Returns:
        [`MLPConfig`] or [`CNNConfig`].

    Raises:
        `ValueError`: if `name` is unknown (the message lists the valid names) or an override is invalid.

    Example:

    ```python
    >>> from hf_kd.models import config_from_preset
    >>> config_from_preset("mnist-mlp-student").hidden_sizes
    [100]
    ```
    """
    config_class, _, _ = _get_preset(name)
    config_kwargs = preset_config_kwargs(name)
    if "num_labels" in overrides and "id2label" not in overrides:
        # The preset's 10 label names would contradict the requested number of labels.
        config_kwargs.pop("id2label", None)
        config_kwargs.pop("label2id", None)
    config_kwargs.update(overrides)
    return config_class(**config_kwargs)


def model_from_preset(name: str, **overrides) -> PreTrainedModel:
    """
    Build a randomly initialised reference model (seed with `torch.manual_seed` for reproducibility).

    Args:
        name (`str`): A preset name, see [`config_from_preset`].
        overrides: Configuration fields replacing the preset's.

    Returns:
        [`MLPForImageClassification`] or [`CNNForImageClassification`].

    Example:

    ```python
    >>> from hf_kd.models import model_from_preset
    >>> model_from_preset("cifar10-cnn-teacher").num_parameters()
    1186986
    ```
    """
    config = config_from_preset(name, **overrides)
    return _MODEL_CLASSES[type(config)](config)


def image_processor_for_preset(name: str, **overrides) -> HfKdImageProcessor:
    """
    The image processor matching a preset's dataset: grayscale 28x28 with the MNIST statistics for the MNIST
    presets, RGB 32x32 with the CIFAR-10 statistics for the CIFAR-10 ones.

    Args:
        name (`str`): A preset name, see [`config_from_preset`].
        overrides: [`HfKdImageProcessor`] arguments replacing the preset's.

    Example:

    ```python
    >>> from hf_kd.models import image_processor_for_preset
    >>> processor = image_processor_for_preset("mnist-mlp-student")
    >>> # processor(list_of_pil_images, return_tensors="pt")["pixel_values"].shape == (N, 1, 28, 28)
    ```
    """
    _, _, processor_kwargs = _get_preset(name)
    kwargs = _copy_values(processor_kwargs)
    kwargs.update(overrides)
    return HfKdImageProcessor(**kwargs)
