# Copyright 2025 The hf_kd authors. Licensed under the Apache License, Version 2.0.
"""MLP image classifier configuration.

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
class MLPConfig(PreTrainedConfig):
    r"""
    Configuration of an [`MLPForImageClassification`]: a multilayer perceptron that flattens an image and applies
    `Linear -> ReLU -> Dropout` blocks followed by a linear classifier.

    The defaults give the MNIST teacher of Hinton et al. (2015): 784 -> 400 -> 100 -> 10 (355,110 parameters).

    Args:
        num_channels (`int`, *optional*, defaults to 1):
            Number of channels of the input images.
        image_size (`int` or `list[int]`, *optional*, defaults to 28):
            Height and width of the input images: one integer for square images, or `[height, width]`.
        hidden_sizes (`list[int]`, *optional*, defaults to `[400, 100]`):
            Width of each hidden layer, in order. At least one.
        dropout (`float`, *optional*, defaults to 0.0):
            Dropout probability applied after every hidden activation (not to the input or the logits).
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

    The flattened input size is `num_channels * height * width`, available as `config.input_size`.

    Example:

    ```python
    >>> from hf_kd.models import MLPConfig, MLPForImageClassification

    >>> config = MLPConfig(hidden_sizes=[100])  # the MNIST student, 784 -> 100 -> 10
    >>> model = MLPForImageClassification(config)
    >>> model.num_parameters()
    79510
    ```
    """

    model_type = "hf_kd_mlp"

    num_channels: int = 1
    image_size: int | list[int] | tuple[int, ...] = 28
    # Tuples, as in `transformers`' own configs: a dataclass field cannot default to a (mutable) list.
    hidden_sizes: list[int] | tuple[int, ...] = (400, 100)
    dropout: float | int = 0.0
    initializer_factor: float | int = 1.0

    def __post_init__(self, **kwargs):
        # `PreTrainedConfig` defaults to 2 labels; the reference datasets (MNIST, CIFAR-10) have 10.
        if self.id2label is None:
            kwargs.setdefault("num_labels", 10)
        requested_num_labels = kwargs.get("num_labels")
        self.hidden_sizes = list(self.hidden_sizes)
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
    def input_size(self) -> int:
        """`int`: Number of input features after flattening, `num_channels * height * width`."""
        height, width = _image_height_width(self.image_size)
        return self.num_channels * height * width

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
        if len(self.hidden_sizes) == 0:
            raise ValueError("`hidden_sizes` must list at least one hidden layer width, got [].")
        for index, value in enumerate(self.hidden_sizes):
            _check_positive_int(f"hidden_sizes[{index}]", value)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {self.dropout!r}.")
        if isinstance(self.initializer_factor, bool) or not self.initializer_factor > 0:
            raise ValueError(f"`initializer_factor` must be a positive number, got {self.initializer_factor!r}.")
        # Checked here rather than at the first forward with labels, where the loss would fail on an unknown value.
        if self.problem_type not in _PROBLEM_TYPES:
            raise ValueError(f"`problem_type` must be one of {_PROBLEM_TYPES}, got {self.problem_type!r}.")


__all__ = ["MLPConfig"]
