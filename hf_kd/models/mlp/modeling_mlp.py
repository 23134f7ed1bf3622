# Copyright 2025 The hf_kd authors. Licensed under the Apache License, Version 2.0.
"""PyTorch MLP image classifier (the MNIST reference teacher and student).

This file is copied next to `config.json` by `save_pretrained` (see `register_for_auto_class`), so a saved model loads
with `trust_remote_code=True` where `hf_kd` is not installed: it imports only `torch`, `transformers` and its sibling
configuration file.
"""

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention

from .configuration_mlp import MLPConfig, _image_height_width


class MLPPreTrainedModel(PreTrainedModel):
    """
    Base class of the MLP models: holds the configuration class and a weight initialisation suited to ReLU networks.
    """

    config_class = MLPConfig
    base_model_prefix = "mlp"
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
        if isinstance(module, nn.Linear):
            nonlinearity = "linear" if module is getattr(self, "classifier", None) else "relu"
            init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity=nonlinearity)
            if module.bias is not None:
                init.zeros_(module.bias)


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
        sizes = [config.input_size, *config.hidden_sizes]
        self.hidden_layers = nn.ModuleList(nn.Linear(sizes[i], sizes[i + 1]) for i in range(len(config.hidden_sizes)))
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(sizes[-1], config.num_labels)
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
        self._check_pixel_values(pixel_values)

        hidden = pixel_values.flatten(start_dim=1)
        all_hidden_states = (hidden,) if output_hidden_states else None
        for layer in self.hidden_layers:
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


__all__ = ["MLPForImageClassification", "MLPPreTrainedModel"]
