# Copyright 2025 The hf_kd authors. Licensed under the Apache License, Version 2.0.
"""The generator of synthetic images of data-free distillation, a `PreTrainedModel` (save_pretrained /
from_pretrained)."""

import math

import torch
from torch import nn
from transformers import PreTrainedModel

from .configuration_generator import GeneratorConfig


class GeneratorModel(PreTrainedModel):
    """
    Maps a latent `z ~ N(0, I)` (and, for a conditional generator, a class) to a batch of images in the teacher's
    input space (see [`GeneratorConfig`]). Used in training mode throughout: its BatchNorm layers normalise each
    synthetic batch with the batch's own statistics, as DAFL's and DFAD's generators do.

    Args:
        config ([`GeneratorConfig`]): The generator's configuration.
    """

    config_class = GeneratorConfig
    base_model_prefix = ""
    main_input_name = "latents"
    _no_split_modules = []

    def __init__(self, config: GeneratorConfig):
        super().__init__(config)
        channels, height, width = config.image_shape
        inputs = config.latent_dim + config.num_classes
        if config.architecture == "mlp":
            self.body = nn.Sequential(
                nn.Linear(inputs, config.hidden_size),
                nn.BatchNorm1d(config.hidden_size),
                nn.LeakyReLU(0.2),
                nn.Linear(config.hidden_size, channels * height * width),
            )
        else:
            self.seed_shape = (config.hidden_size, height // 4, width // 4)
            self.project = nn.Linear(inputs, math.prod(self.seed_shape))
            hidden = config.hidden_size
            self.body = nn.Sequential(
                nn.BatchNorm2d(hidden),
                nn.Upsample(scale_factor=2),
                nn.Conv2d(hidden, hidden, 3, padding=1),
                nn.BatchNorm2d(hidden),
                nn.LeakyReLU(0.2),
                nn.Upsample(scale_factor=2),
                nn.Conv2d(hidden, hidden // 2, 3, padding=1),
                nn.BatchNorm2d(hidden // 2),
                nn.LeakyReLU(0.2),
                nn.Conv2d(hidden // 2, channels, 3, padding=1),
            )
        # DAFL's last layer: tanh, then a BatchNorm without affine parameters (batch-normalised pixels).
        self.output_norm = nn.BatchNorm2d(channels, affine=False) if config.output_norm == "batchnorm" else None
        mean = torch.tensor(config.image_mean).view(-1, 1, 1).expand(channels, 1, 1)
        std = torch.tensor(config.image_std).view(-1, 1, 1).expand(channels, 1, 1)
        self.register_buffer("pixel_mean", mean.clone(), persistent=False)
        self.register_buffer("pixel_std", std.clone(), persistent=False)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        # PyTorch's defaults, not `PreTrainedModel`'s N(0, 0.02): the references' generators are initialised so.
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)):
            module.reset_parameters()

    def forward(self, latents: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """`latents` `(B, latent_dim)`, and for a conditional generator `labels` `(B,)`: images `(B, C, H, W)`."""
        config = self.config
        if config.num_classes:
            if labels is None:
                raise ValueError("This generator is conditional (num_classes > 0): pass the `labels` to generate.")
            latents = torch.cat([latents, nn.functional.one_hot(labels, config.num_classes).to(latents.dtype)], dim=1)
        if config.architecture == "mlp":
            images = self.body(latents).view(-1, *config.image_shape)
        else:
            images = self.body(self.project(latents).view(-1, *self.seed_shape))
        if self.output_norm is not None:
            return self.output_norm(torch.tanh(images))
        return (torch.sigmoid(images) - self.pixel_mean) / self.pixel_std

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Images of this generator's space back to pixels in [0, 1] for display (`batchnorm` output: each batch
        stretched to its own range)."""
        if self.output_norm is None:
            return (images * self.pixel_std + self.pixel_mean).clamp(0, 1)
        low, high = images.amin(), images.amax()
        return (images - low) / (high - low).clamp_min(1e-6)


__all__ = ["GeneratorModel"]
