# Copyright 2025 The hf_kd authors. Licensed under the Apache License, Version 2.0.
"""CNN image classifier configuration.

This file is copied next to `config.json` by `save_pretrained` (see `register_for_auto_class`), so a saved model loads
with `trust_remote_code=True` where `hf_kd` is not installed: it must import nothing but `transformers` and
`huggingface_hub`.
"""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

# The values `transformers`' classification loss knows; `None` lets the first labels decide (see `forward`).
_PROBLEM_TYPES = (None, "single_label_classification", "multi_label_classification", "regression")


def _check_positive_int(name: str, value) -> None:
    # `bool` is an `int` subclass: `True` would silently mean 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


def _image_height_width(image_size) -> tuple[int, int]:
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        return image_size, image_size
    return tuple(image_size)


@strict
class CNNConfig(PreTrainedConfig):
    r"""
    Configuration of a [`CNNForImageClassification`]: a plain convolutional network of `Conv2d -> ReLU` layers, some
    followed by a 2x2 max pool, then `Linear -> ReLU -> Dropout` blocks and a linear classifier.

    The defaults give the CIFAR-10 teacher: conv 3->128, conv 128->64, pool, conv 64->64, conv 64->32, pool,
    FC 2048->512, dropout, 512->10 (1,186,986 parameters).

    Args:
        num_channels (`int`, *optional*, defaults to 3):
            Number of channels of the input images.
        image_size (`int` or `list[int]`, *optional*, defaults to 32):
            Height and width of the input images: one integer for square images, or `[height, width]`.
        conv_channels (`list[int]`, *optional*, defaults to `[128, 64, 64, 32]`):
            Output channels of each convolution, in order. At least one.
        pool_after (`list[int]`, *optional*, defaults to `[1, 3]`):
            Indices (into `conv_channels`) of the convolutions followed by a 2x2 max pool with stride 2.
        kernel_size (`int`, *optional*, defaults to 3):
            Kernel size of every convolution. Must be odd: the padding is `kernel_size // 2`, which keeps the spatial
            size, so only the pools shrink the feature maps.
        classifier_hidden_sizes (`list[int]`, *optional*, defaults to `[512]`):
            Width of each hidden fully connected layer between the flattened feature maps and the classifier. May
            be empty.
        dropout (`float`, *optional*, defaults to 0.1):
            Dropout probability applied after every hidden fully connected activation.
        initializer_factor (`float`, *optional*, defaults to 1.0):
            Scale of the standard deviation of the initial weights (He initialisation: the default, 1.0, is plain
            `torch.nn.init.kaiming_normal_`). Keep it at 1; transformers' common model tests set it near 0 to check
            that every weight goes through the model's initialisation.
        num_labels (`int`, *optional*, defaults to 10):
            Number of classes. Stored through `id2label`, as for every `transformers` config.
        problem_type (`str`, *optional*):
            The loss computed from `labels`, as in `transformers`' classification heads:
            `"single_label_classification"` (cross-entropy on class indices), `"multi_label_classification"` (binary
            cross-entropy with logits on float labels) or `"regression"` (mean squared error). When unset, the first
            call with labels sets it: `"regression"` for `num_labels=1`, single-label for integer labels, multi-label
            otherwise.

    `config.flattened_size` is the number of features entering the first fully connected layer.

    Example:

    ```python
    >>> from hf_kd.models import CNNConfig, CNNForImageClassification

    >>> # the CIFAR-10 student
    >>> config = CNNConfig(conv_channels=[16, 16], pool_after=[0, 1], classifier_hidden_sizes=[256])
    >>> CNNForImageClassification(config).num_parameters()
    267738
    ```
    """

    model_type = "hf_kd_cnn"

    num_channels: int = 3
    image_size: int | list[int] | tuple[int, ...] = 32
    # Tuples, as in `transformers`' own configs: a dataclass field cannot default to a (mutable) list.
    conv_channels: list[int] | tuple[int, ...] = (128, 64, 64, 32)
    pool_after: list[int] | tuple[int, ...] = (1, 3)
    kernel_size: int = 3
    classifier_hidden_sizes: list[int] | tuple[int, ...] = (512,)
    dropout: float | int = 0.1
    initializer_factor: float | int = 1.0

    def __post_init__(self, **kwargs):
        # `PreTrainedConfig` defaults to 2 labels; the reference datasets (MNIST, CIFAR-10) have 10.
        if self.id2label is None:
            kwargs.setdefault("num_labels", 10)
        requested_num_labels = kwargs.get("num_labels")
        self.conv_channels = list(self.conv_channels)
        self.pool_after = sorted(self.pool_after)
        self.classifier_hidden_sizes = list(self.classifier_hidden_sizes)
        if not isinstance(self.image_size, int):
            self.image_size = list(self.image_size)
        super().__post_init__(**kwargs)
        # `num_labels=-3` becomes an empty `id2label`; report what the user asked for, not the resulting 0.
        if self.num_labels is None or self.num_labels < 1:
            shown = requested_num_labels if requested_num_labels is not None else self.num_labels
            raise ValueError(f"`num_labels` must be at least 1, got {shown!r}.")
        # Checked here, not only as a `validate_*` hook, so that bad values raise a plain `ValueError` at construction
        # time (`@strict` wraps errors of its hooks in its own exception type). `save_pretrained` runs the hook again.
        self.validate_hyperparameters()

    @property
    def feature_map_size(self) -> tuple[int, int]:
        """`tuple[int, int]`: Height and width of the last feature maps (pools floor odd sizes, as `MaxPool2d`)."""
        height, width = _image_height_width(self.image_size)
        for _ in self.pool_after:
            height, width = height // 2, width // 2
        return height, width

    @property
    def flattened_size(self) -> int:
        """`int`: Number of features entering the fully connected layers."""
        height, width = self.feature_map_size
        return self.conv_channels[-1] * height * width

    def validate_hyperparameters(self):
        """Raise a `ValueError` naming the first invalid field."""
        _check_positive_int("num_channels", self.num_channels)
        if isinstance(self.image_size, int):
            _check_positive_int("image_size", self.image_size)
        else:
            if len(self.image_size) != 2:
                raise ValueError(f"`image_size` must be an integer or [height, width], got {self.image_size!r}.")
            for value in self.image_size:
                _check_positive_int("image_size", value)
        if len(self.conv_channels) == 0:
            raise ValueError("`conv_channels` must list at least one convolution, got [].")
        for index, value in enumerate(self.conv_channels):
            _check_positive_int(f"conv_channels[{index}]", value)
        if len(set(self.pool_after)) != len(self.pool_after) or any(
            isinstance(index, bool) or not 0 <= index < len(self.conv_channels) for index in self.pool_after
        ):
            raise ValueError(
                f"`pool_after` must hold distinct convolution indices in [0, {len(self.conv_channels) - 1}], "
                f"got {self.pool_after!r}."
            )
        _check_positive_int("kernel_size", self.kernel_size)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"`kernel_size` must be odd so that padding keeps the size, got {self.kernel_size}.")
        for index, value in enumerate(self.classifier_hidden_sizes):
            _check_positive_int(f"classifier_hidden_sizes[{index}]", value)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {self.dropout!r}.")
        if isinstance(self.initializer_factor, bool) or not self.initializer_factor > 0:
            raise ValueError(f"`initializer_factor` must be a positive number, got {self.initializer_factor!r}.")
        # Checked here rather than at the first forward with labels, where the loss would fail on an unknown value.
        if self.problem_type not in _PROBLEM_TYPES:
            raise ValueError(f"`problem_type` must be one of {_PROBLEM_TYPES}, got {self.problem_type!r}.")
        if min(self.feature_map_size) < 1:
            raise ValueError(
                f"`pool_after` has {len(self.pool_after)} pools, which shrink `image_size`={self.image_size!r} to "
                f"nothing; use fewer pools or larger images."
            )


__all__ = ["CNNConfig"]
