# Copyright 2025 The hf_kd authors. Licensed under the Apache License, Version 2.0.
"""PyTorch CNN image classifier (the CIFAR-10 reference teacher and student) and its headless base model.

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

from .configuration_cnn import CNNConfig, _image_height_width


class CNNBlock(GradientCheckpointingLayer):
    """
    The unit that gradient checkpointing recomputes: one `Conv2d -> ReLU [-> MaxPool]` or `Linear -> ReLU -> Dropout`
    block, returning the pre-activation and the output.

    It holds no layer of its own: the weights stay where checkpoints and feature names find them (`convs.{i}`,
    `fc_layers.{j}`), and the model hands the block its computation at each call. (A layer passed as an argument would
    not do: accelerate's device hooks send every argument that has a `.to` method to the block's device, modules
    included.)
    """

    def forward(self, hidden_states: torch.Tensor, compute: Callable) -> tuple[torch.Tensor, torch.Tensor]:
        return compute(hidden_states)


class CNNPreTrainedModel(PreTrainedModel):
    """
    Base class of the CNN models: holds the configuration class, a weight initialisation suited to ReLU networks and
    the feature layers' forward pass, shared by [`CNNModel`] and [`CNNForImageClassification`].
    """

    config_class = CNNConfig
    # Empty, which `transformers` reads as "the model is its own base model" (`model.base_model is model`): the
    # feature layers sit at the top level of both `CNNModel` and `CNNForImageClassification`, under the same names
    # (`convs.*`, `fc_layers.*`), so either checkpoint loads into the other by plain key match (the classifier reported
    # as newly initialised, or as unused). Nesting them under a prefix would rename every key of the saved classifiers.
    base_model_prefix = ""
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # The loss is a plain batch mean, which the Trainer must divide by the gradient accumulation steps; it does so
    # only for models that do not accept loss kwargs. It reads this attribute first, else looks for `**kwargs` in
    # `forward`: stating it keeps the division if `forward` ever grows `**kwargs`.
    accepts_loss_kwargs = False
    # Each block (`Conv2d -> ReLU [-> MaxPool]`, `Linear -> ReLU -> Dropout`) is checkpointed as a whole, through its
    # `CNNBlock` (see `_run_block`).
    supports_gradient_checkpointing = True
    # Empty, not `None`, which `transformers` reads as "no `device_map='auto'` support" (its common model tests
    # skip their offload and model-parallel checks; 4.x refused to load): the layers are leaf modules, each called
    # through its own `__call__`, so accelerate's hooks move the activations between any two of them, and
    # the ReLU, pool and dropout modules hold no weights.
    _no_split_modules = []

    @torch.no_grad()
    def _init_weights(self, module):
        # The `PreTrainedModel` default, N(0, 0.02), starves deep ReLU stacks of signal; He initialisation (fan-in)
        # keeps the activation variance constant. The classifier is not followed by a ReLU, hence its linear gain.
        # `config.initializer_factor` scales the standard deviation; at its default, 1.0, the draw is bit for bit
        # `torch.nn.init.kaiming_normal_`'s. The `transformers.initialization` functions skip tensors flagged as
        # loaded, so `from_pretrained` keeps the checkpoint's values.
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nonlinearity = "linear" if module is getattr(self, "classifier", None) else "relu"
            fan_in = module.weight[0].numel()  # in_features, or in_channels * kernel height * kernel width
            std = nn.init.calculate_gain(nonlinearity) / math.sqrt(fan_in) * self.config.initializer_factor
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)

    def get_input_embeddings(self):
        # Images have no token embeddings. transformers' default raises NotImplementedError for a model without them,
        # and accelerate's FSDP2 wrapping asks every model for them (`fsdp2_prepare_model`): answer "none".
        return None

    def _build_feature_layers(self, config: CNNConfig) -> int:
        """Create the layers before the classifier and return how many features they output."""
        # One place for both models, in the order that fixes the random initialisation of seeded runs.
        channels = [config.num_channels, *config.conv_channels]
        self.convs = nn.ModuleList(
            nn.Conv2d(channels[i], channels[i + 1], kernel_size=config.kernel_size, padding=config.kernel_size // 2)
            for i in range(len(config.conv_channels))
        )
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        sizes = [config.flattened_size, *config.classifier_hidden_sizes]
        self.fc_layers = nn.ModuleList(
            nn.Linear(sizes[i], sizes[i + 1]) for i in range(len(config.classifier_hidden_sizes))
        )
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(config.dropout)
        # A set: the forward pass asks once per convolution.
        self._pool_after = frozenset(config.pool_after)
        # One per convolution, then one per hidden fully connected layer. No parameters: the keys of saved models do
        # not change.
        self.blocks = nn.ModuleList(CNNBlock() for _ in range(len(self.convs) + len(self.fc_layers)))
        return sizes[-1]

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        height, width = _image_height_width(self.config.image_size)
        expected = (self.config.num_channels, height, width)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"`pixel_values` must have shape (batch_size, {', '.join(map(str, expected))}) for this model "
                f"(num_channels={self.config.num_channels}, image_size={self.config.image_size!r}), "
                f"got {tuple(pixel_values.shape)}."
            )

    def _conv_block(self, conv: nn.Conv2d, pool: bool, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre_activation = conv(hidden)
        hidden = self.activation(pre_activation)
        if pool:
            hidden = self.pool(hidden)
        return pre_activation, hidden

    def _fc_block(self, layer: nn.Linear, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
        """The classifier's input, `(batch_size, features)`, and the hidden states described in `forward`."""
        self._check_pixel_values(pixel_values)
        hidden = pixel_values
        all_hidden_states = (hidden,) if output_hidden_states else None
        for index, conv in enumerate(self.convs):
            compute = partial(self._conv_block, conv, index in self._pool_after)
            pre_activation, hidden = self._run_block(index, conv, compute, hidden)
            if output_hidden_states:
                all_hidden_states += (pre_activation, hidden)

        hidden = hidden.flatten(start_dim=1)
        for index, layer in enumerate(self.fc_layers, start=len(self.convs)):
            pre_activation, hidden = self._run_block(index, layer, partial(self._fc_block, layer), hidden)
            if output_hidden_states:
                all_hidden_states += (pre_activation, hidden)
        return hidden, all_hidden_states


class CNNModel(CNNPreTrainedModel):
    """
    The feature layers of [`CNNForImageClassification`] without its classifier: `Conv2d -> ReLU` layers (one per
    entry of `config.conv_channels`, a 2x2 max pool after those listed in `config.pool_after`), the feature maps
    flattened, then `Linear -> ReLU -> Dropout` blocks (one per entry of `config.classifier_hidden_sizes`). Its
    parameters have the same names as in the classifier, so `CNNModel.from_pretrained` loads a saved classifier's
    features (and `CNNForImageClassification.from_pretrained` a saved `CNNModel`, with a newly initialised classifier).

    Args:
        config ([`CNNConfig`]): The model configuration.
    """

    def __init__(self, config: CNNConfig):
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
            [`~transformers.modeling_outputs.BaseModelOutputWithNoAttention`] with `last_hidden_state`, what the
            classifier of [`CNNForImageClassification`] receives: the output of the last fully connected block,
            `(batch_size, config.classifier_hidden_sizes[-1])`, or the flattened feature maps,
            `(batch_size, config.flattened_size)`, when `config.classifier_hidden_sizes` is empty; and, when
            `output_hidden_states=True`, the `hidden_states` documented in [`CNNForImageClassification.forward`].
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


class CNNForImageClassification(CNNPreTrainedModel):
    """
    A plain convolutional image classifier: `Conv2d -> ReLU` layers (one per entry of `config.conv_channels`, a 2x2
    max pool after those listed in `config.pool_after`), the feature maps flattened, `Linear -> ReLU -> Dropout`
    blocks (one per entry of `config.classifier_hidden_sizes`) and a final linear classifier.

    Args:
        config ([`CNNConfig`]): The model configuration.
    """

    def __init__(self, config: CNNConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        num_features = self._build_feature_layers(config)
        self.classifier = nn.Linear(num_features, config.num_labels)
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
            `hidden_states`: a tuple of `1 + 2 * (len(config.conv_channels) + len(config.classifier_hidden_sizes))`
            tensors, in this order:

            - `hidden_states[0]`: `pixel_values`;
            - for each convolution `i`: its pre-activation (the `Conv2d` output before the ReLU, the features that
              feature distillation usually matches), `(batch_size, conv_channels[i], h, w)`, then the block output
              (after the ReLU and, when `i` is in `config.pool_after`, the max pool: what the next layer receives);
            - for each hidden fully connected layer: its pre-activation, then its output (after ReLU and dropout),
              both `(batch_size, classifier_hidden_sizes[j])`.

            So `hidden_states[1::2]` are the pre-activations and `hidden_states[2::2]` the block outputs; the first
            `len(config.conv_channels)` of each are the convolutional ones.
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


__all__ = ["CNNBlock", "CNNForImageClassification", "CNNModel", "CNNPreTrainedModel"]
