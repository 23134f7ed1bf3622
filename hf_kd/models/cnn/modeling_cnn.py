# Copyright 2025 The hf_kd authors. Licensed under the Apache License, Version 2.0.
"""PyTorch CNN image classifier (the CIFAR-10 reference teacher and student).

This file is copied next to `config.json` by `save_pretrained` (see `register_for_auto_class`), so a saved model loads
with `trust_remote_code=True` where `hf_kd` is not installed: it imports only `torch`, `transformers` and its sibling
configuration file.
"""

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention

from .configuration_cnn import CNNConfig, _image_height_width


class CNNPreTrainedModel(PreTrainedModel):
    """
    Base class of the CNN models: holds the configuration class and a weight initialisation suited to ReLU networks.
    """

    config_class = CNNConfig
    base_model_prefix = "cnn"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # The loss is a plain batch mean, which the Trainer must divide by the gradient accumulation steps; it does so
    # only for models that do not accept loss kwargs. It reads this attribute first, else looks for `**kwargs` in
    # `forward`: stating it keeps the division if `forward` ever grows `**kwargs`.
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module):
        # The `PreTrainedModel` default, N(0, 0.02), starves deep ReLU stacks of signal; He initialisation keeps the
        # activation variance constant. The classifier is not followed by a ReLU, hence its linear gain. The
        # `transformers.initialization` functions skip tensors flagged as loaded, so `from_pretrained` keeps the
        # checkpoint's values.
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nonlinearity = "linear" if module is getattr(self, "classifier", None) else "relu"
            init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity=nonlinearity)
            if module.bias is not None:
                init.zeros_(module.bias)


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
        self.classifier = nn.Linear(sizes[-1], config.num_labels)
        # A set: `forward` asks once per convolution.
        self._pool_after = frozenset(config.pool_after)
        self.post_init()

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        height, width = _image_height_width(self.config.image_size)
        expected = (self.config.num_channels, height, width)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"`pixel_values` must have shape (batch_size, {', '.join(map(str, expected))}) for this model "
                f"(num_channels={self.config.num_channels}, image_size={self.config.image_size!r}), "
                f"got {tuple(pixel_values.shape)}."
            )

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
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Class indices for the cross-entropy loss; `-100` marks examples to ignore.
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
        self._check_pixel_values(pixel_values)

        hidden = pixel_values
        all_hidden_states = (hidden,) if output_hidden_states else None
        for index, conv in enumerate(self.convs):
            pre_activation = conv(hidden)
            hidden = self.activation(pre_activation)
            if index in self._pool_after:
                hidden = self.pool(hidden)
            if output_hidden_states:
                all_hidden_states += (pre_activation, hidden)

        hidden = hidden.flatten(start_dim=1)
        for layer in self.fc_layers:
            pre_activation = layer(hidden)
            hidden = self.dropout(self.activation(pre_activation))
            if output_hidden_states:
                all_hidden_states += (pre_activation, hidden)
        logits = self.classifier(hidden)

        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels.to(logits.device).view(-1))

        output = ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=all_hidden_states)
        return output if return_dict else output.to_tuple()


__all__ = ["CNNForImageClassification", "CNNPreTrainedModel"]
