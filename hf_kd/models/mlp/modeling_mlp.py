# Copyright 2025 The hf_kd authors. Licensed under the Apache License, Version 2.0.
"""PyTorch MLP image classifier (the MNIST reference teacher and student) and its headless base model.

This file is copied next to `config.json` by `save_pretrained` (see `register_for_auto_class`), so a saved model loads
with `trust_remote_code=True` where `hf_kd` is not installed: it imports only `torch`, `transformers` and its sibling
configuration file.
"""

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithNoAttention,
    ImageClassifierOutputWithNoAttention,
)

from .configuration_mlp import MLPConfig, _image_height_width


class MLPBlock(GradientCheckpointingLayer):
    """
    The unit that gradient checkpointing recomputes: one `Linear -> ReLU -> Dropout` block, returning the
    pre-activation and the output.

    It holds no layer of its own: the weights stay where checkpoints and feature names find them
    (`hidden_layers.{i}`), and the model hands the block its computation at each call. (A layer passed as an argument
    would not do: accelerate's device hooks send every argument that has a `.to` method to the block's device, modules
    included.)
    """

    def forward(self, hidden_states: torch.Tensor, compute: Callable) -> tuple[torch.Tensor, torch.Tensor]:
        return compute(hidden_states)


class MLPPreTrainedModel(PreTrainedModel):
    """
    Base class of the MLP models: holds the configuration class, a weight initialisation suited to ReLU networks and
    the feature layers' forward pass, shared by [`MLPModel`] and [`MLPForImageClassification`].
    """

    config_class = MLPConfig
    # Empty, which `transformers` reads as "the model is its own base model" (`model.base_model is model`): the
    # feature layers sit at the top level of both `MLPModel` and `MLPForImageClassification`, under the same names
    # (`hidden_layers.*`), so either checkpoint loads into the other by plain key match (the classifier reported as
    # newly initialised, or as unused). Nesting them under a prefix would rename every key of the saved classifiers.
    base_model_prefix = ""
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # The loss is a plain batch mean, which the Trainer must divide by the gradient accumulation steps; it does so
    # only for models that do not accept loss kwargs. It reads this attribute first, else looks for `**kwargs` in
    # `forward`: stating it keeps the division if `forward` ever grows `**kwargs`.
    accepts_loss_kwargs = False
    # Each `Linear -> ReLU -> Dropout` block is checkpointed as a whole, through its `MLPBlock` (see `_run_block`).
    supports_gradient_checkpointing = True
    # Empty, not `None`, which `transformers` reads as "no `device_map='auto'` support" (its common model tests
    # skip their offload and model-parallel checks; 4.x refused to load): the layers are leaf modules, each called
    # through its own `__call__`, so accelerate's hooks move the activations between any two of them, and
    # the ReLU and dropout modules hold no weights.
    _no_split_modules = []

    @torch.no_grad()
    def _init_weights(self, module):
        # The `PreTrainedModel` default, N(0, 0.02), starves deep ReLU stacks of signal; He initialisation (fan-in)
        # keeps the activation variance constant. The classifier is not followed by a ReLU, hence its linear gain.
        # `config.initializer_factor` scales the standard deviation; at its default, 1.0, the draw is bit for bit
        # `torch.nn.init.kaiming_normal_`'s. The `transformers.initialization` functions skip tensors flagged as
        # loaded, so `from_pretrained` keeps the checkpoint's values.
        if isinstance(module, nn.Linear):
            nonlinearity = "linear" if module is getattr(self, "classifier", None) else "relu"
            fan_in = module.weight[0].numel()
            std = nn.init.calculate_gain(nonlinearity) / math.sqrt(fan_in) * self.config.initializer_factor
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)

    def get_input_embeddings(self):
        # Images have no token embeddings. transformers' default raises NotImplementedError for a model without them,
        # and accelerate's FSDP2 wrapping asks every model for them (`fsdp2_prepare_model`): answer "none".
        return None

    def _build_feature_layers(self, config: MLPConfig) -> None:
        # One place for both models, in the order that fixes the random initialisation of seeded runs.
        sizes = [config.input_size, *config.hidden_sizes]
        self.hidden_layers = nn.ModuleList(nn.Linear(sizes[i], sizes[i + 1]) for i in range(len(config.hidden_sizes)))
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(config.dropout)
        # No parameters: the keys of saved models do not change.
        self.blocks = nn.ModuleList(MLPBlock() for _ in config.hidden_sizes)

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        height, width = _image_height_width(self.config.image_size)
        expected = (self.config.num_channels, height, width)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"`pixel_values` must have shape (batch_size, {', '.join(map(str, expected))}) for this model "
                f"(num_channels={self.config.num_channels}, image_size={self.config.image_size!r}), "
                f"got {tuple(pixel_values.shape)}."
            )

    def _hidden_block(self, layer: nn.Linear, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre_activation = layer(hidden)
        return pre_activation, self.dropout(self.activation(pre_activation))

    def _run_block(self, index: int, layer: nn.Module, compute, hidden: torch.Tensor):
        block = self.blocks[index]
        if block.gradient_checkpointing and self.training and torch.is_grad_enabled() and not hidden.requires_grad:
            if not any(parameter.requires_grad for parameter in layer.parameters()):
                # Nothing to differentiate here (frozen block on a constant input): autograd keeps nothing anyway.
                return compute(hidden)
            # The reentrant checkpoint (`use_reentrant=True`) only back-propagates through blocks whose inputs require
            # gradients, and would silently leave this block's weights without any (the first block, fed with
            # `pixel_values`). A detached copy that requires them costs one unused input gradient.
            hidden = hidden.detach().requires_grad_()
        # Dropout draws the same mask when the backward pass recomputes the block: `torch.utils.checkpoint` restores
        # the random state by default.
        return block(hidden, compute=compute)

    def _features(
        self, pixel_values: torch.Tensor, output_hidden_states: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """The classifier's input, `(batch_size, hidden_sizes[-1])`, and the hidden states described in `forward`."""
        self._check_pixel_values(pixel_values)
        hidden = pixel_values.flatten(start_dim=1)
        all_hidden_states = (hidden,) if output_hidden_states else None
        for index, layer in enumerate(self.hidden_layers):
            pre_activation, hidden = self._run_block(index, layer, partial(self._hidden_block, layer), hidden)
            if output_hidden_states:
                all_hidden_states += (pre_activation, hidden)
        return hidden, all_hidden_states


class MLPModel(MLPPreTrainedModel):
    """
    The feature layers of [`MLPForImageClassification`] without its classifier: the image is flattened, then passed
    through `Linear -> ReLU -> Dropout` blocks (one per entry of `config.hidden_sizes`). Its parameters have the same
    names as in the classifier, so `MLPModel.from_pretrained` loads a saved classifier's features (and
    `MLPForImageClassification.from_pretrained` a saved `MLPModel`, with a newly initialised classifier).

    Args:
        config ([`MLPConfig`]): The model configuration.
    """

    def __init__(self, config: MLPConfig):
        super().__init__(config)
        self._build_feature_layers(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithNoAttention | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images, e.g. from the [`HfKdImageProcessor`] saved with the model.
            output_hidden_states (`bool`, *optional*):
                Whether to return the intermediate features. Defaults to `config.output_hidden_states`.
            return_dict (`bool`, *optional*):
                Whether to return a [`~transformers.modeling_outputs.BaseModelOutputWithNoAttention`] rather than a
                tuple. Defaults to `config.return_dict`.

        Returns:
            [`~transformers.modeling_outputs.BaseModelOutputWithNoAttention`] with `last_hidden_state`, the output of
            the last block (what the classifier of [`MLPForImageClassification`] receives), of shape
            `(batch_size, config.hidden_sizes[-1])`, and, when `output_hidden_states=True`, the `hidden_states`
            documented in [`MLPForImageClassification.forward`].
        """
        if pixel_values is None:
            raise ValueError("You have to specify `pixel_values`.")
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        features, all_hidden_states = self._features(pixel_values, output_hidden_states)
        output = BaseModelOutputWithNoAttention(last_hidden_state=features, hidden_states=all_hidden_states)
        return output if return_dict else output.to_tuple()


class MLPForImageClassification(MLPPreTrainedModel):
    """
    A multilayer perceptron image classifier: the image is flattened, then passed through
    `Linear -> ReLU -> Dropout` blocks (one per entry of `config.hidden_sizes`) and a final linear classifier.

    Args:
        config ([`MLPConfig`]): The model configuration.
    """

    def __init__(self, config: MLPConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self._build_feature_layers(config)
        self.classifier = nn.Linear(config.hidden_sizes[-1], config.num_labels)
        self.post_init()

    # Explicit arguments only, no `**kwargs`: the Trainer divides the loss by the gradient accumulation steps only
    # for models whose forward does not accept loss kwargs.
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ImageClassifierOutputWithNoAttention | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images, e.g. from the [`HfKdImageProcessor`] saved with the model.
            labels (`torch.Tensor`, *optional*):
                Targets of the loss, which `config.problem_type` chooses as in `transformers`' own classification
                heads:

                - `"single_label_classification"`: class indices of shape `(batch_size,)` (integers), cross-entropy;
                  `-100` marks examples to ignore;
                - `"multi_label_classification"`: floats in [0, 1] of shape `(batch_size, num_labels)`, binary
                  cross-entropy with logits;
                - `"regression"`: floats of shape `(batch_size,)` when `num_labels=1` (else
                  `(batch_size, num_labels)`), mean squared error.

                When `config.problem_type` is unset, the first call with labels sets it: regression for
                `num_labels=1`, single-label for integer labels, multi-label otherwise.
            output_hidden_states (`bool`, *optional*):
                Whether to return the intermediate features. Defaults to `config.output_hidden_states`.
            return_dict (`bool`, *optional*):
                Whether to return an [`~transformers.modeling_outputs.ImageClassifierOutputWithNoAttention`] rather
                than a tuple. Defaults to `config.return_dict`.

        Returns:
            [`~transformers.modeling_outputs.ImageClassifierOutputWithNoAttention`] with `loss` (when `labels` are
            given), `logits` of shape `(batch_size, num_labels)` and, when `output_hidden_states=True`,
            `hidden_states`: a tuple of `1 + 2 * len(config.hidden_sizes)` tensors of shape `(batch_size, features)`,
            in this order:

            - `hidden_states[0]`: the flattened input, `(batch_size, config.input_size)`;
            - for each hidden layer `i`: `hidden_states[1 + 2 * i]`, its pre-activation (the `Linear` output, before
              the ReLU, the features that feature distillation usually matches), then `hidden_states[2 + 2 * i]`,
              its output (after ReLU and dropout, what the next layer receives).

            So `hidden_states[1::2]` are the pre-activations and `hidden_states[2::2]` the block outputs.
        """
        if pixel_values is None:
            raise ValueError("You have to specify `pixel_values`.")
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict

        features, all_hidden_states = self._features(pixel_values, output_hidden_states)
        logits = self.classifier(features)

        loss = None
        if labels is not None:
            # `transformers`' classification loss (`ForSequenceClassificationLoss`, as for its image classifiers),
            # which follows `config.problem_type`. Single-label, it is the same `cross_entropy` call as a plain one.
            loss = self.loss_function(labels, logits, self.config)

        output = ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=all_hidden_states)
        return output if return_dict else output.to_tuple()


__all__ = ["MLPBlock", "MLPForImageClassification", "MLPModel", "MLPPreTrainedModel"]
