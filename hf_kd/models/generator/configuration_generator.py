# Copyright 2025 The hf_kd authors. Licensed under the Apache License, Version 2.0.
"""Configuration of the generator of synthetic images used by data-free distillation."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

GENERATOR_ARCHITECTURES = ("mlp", "conv")
OUTPUT_NORMS = ("batchnorm", "pixels")


@strict
class GeneratorConfig(PreTrainedConfig):
    r"""
    Configuration of a [`GeneratorModel`]: a latent vector (and, when `num_classes > 0`, a one-hot class) to an image
    of `image_shape`, in the teacher's input space.

    Args:
        latent_dim (`int`, *optional*, defaults to 100):
            Size of the Gaussian latent vector `z` (DAFL and DFAD: 100).
        hidden_size (`int`, *optional*, defaults to 256):
            Width of the hidden layer (`mlp`), or channels of the first feature map (`conv`).
        image_shape (`list[int]`, *optional*, defaults to `[1, 28, 28]`):
            `[channels, height, width]` of the images, the teacher's input.
        architecture (`str`, *optional*, defaults to `"mlp"`):
            `"mlp"`: `z -> Linear -> BatchNorm -> LeakyReLU -> Linear -> image`. `"conv"`: DAFL's generator, `z ->
            Linear -> (hidden_size, H/4, W/4) -> 2 x (upsample, conv 3x3, BatchNorm, LeakyReLU) -> conv 3x3 -> image`
            (height and width divisible by 4).
        output_norm (`str`, *optional*, defaults to `"batchnorm"`):
            The last layer. `"batchnorm"`: `tanh` then a BatchNorm without affine parameters (DAFL's): each pixel of a
            batch has mean 0 and variance 1, the scale of normalised images. `"pixels"`: a sigmoid gives pixels in
            [0, 1], normalised with `image_mean` / `image_std` as the image processor does.
        image_mean, image_std (`list[float]`, *optional*):
            The image processor's normalisation (one value per channel), for `output_norm="pixels"`.
        num_classes (`int`, *optional*, defaults to 0):
            A conditional generator when > 0: a one-hot class is appended to `z` (method `statistics`).
    """

    model_type = "hf_kd_generator"

    latent_dim: int = 100
    hidden_size: int = 256
    image_shape: list[int] | tuple[int, ...] = (1, 28, 28)
    architecture: str = "mlp"
    output_norm: str = "batchnorm"
    image_mean: list[float] | tuple[float, ...] = (0.0,)
    image_std: list[float] | tuple[float, ...] = (1.0,)
    num_classes: int = 0

    def __post_init__(self, **kwargs):
        self.image_shape = [int(v) for v in self.image_shape]
        self.image_mean, self.image_std = [float(v) for v in self.image_mean], [float(v) for v in self.image_std]
        super().__post_init__(**kwargs)
        self.validate_hyperparameters()

    def validate_hyperparameters(self):
        """Raise a `ValueError` naming the first invalid field."""
        for name in ("latent_dim", "hidden_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ValueError(f"`image_shape` must be [channels, height, width], got {self.image_shape!r}.")
        if self.architecture not in GENERATOR_ARCHITECTURES:
            raise ValueError(f"`architecture` must be one of {GENERATOR_ARCHITECTURES}, got {self.architecture!r}.")
        if self.architecture == "conv" and (self.image_shape[1] % 4 or self.image_shape[2] % 4):
            raise ValueError(f"The conv generator needs a height and width divisible by 4, got {self.image_shape}.")
        if self.output_norm not in OUTPUT_NORMS:
            raise ValueError(f"`output_norm` must be one of {OUTPUT_NORMS}, got {self.output_norm!r}.")
        if self.num_classes < 0:
            raise ValueError(f"`num_classes` must be >= 0, got {self.num_classes}.")
        if min(self.image_std) <= 0:
            raise ValueError(f"`image_std` must be positive, got {self.image_std}.")


__all__ = ["GeneratorConfig"]
