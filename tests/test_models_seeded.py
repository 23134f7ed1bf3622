"""Seeded reference models keep their numbers: the same seed gives the same initial weights, the same forward pass and
the same gradients as before the models moved to transformers' `GradientCheckpointingLayer` and `initializer_factor`
(commit de98607), so that seeded runs (the headline MNIST run: teacher 98.84%, CE 97.96%, KD 98.17%) do not move.

The pinned sums were computed with that commit's code (float64 sums of the float32 tensors). Two CPUs may draw the
last bit of a normal sample differently, hence the relative tolerance of 1e-6, far below what any other draw, order
or scale of initialisation would change. Two checks are exact on any machine: the initialisation is bit for bit
`torch.nn.init.kaiming_normal_` (the formula of the earlier code), and the forward pass is bit for bit the plain
torch computation on the model's weights.
"""

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init

from hf_kd.models import (
    CNNConfig,
    CNNForImageClassification,
    MLPConfig,
    MLPForImageClassification,
    model_from_preset,
)

# preset -> {state_dict key: (sum, sum of absolute values)}, in state_dict order, for `torch.manual_seed(0)`.
PINNED_WEIGHTS = {
    "mnist-mlp-teacher": {
        "hidden_layers.0.weight": (-29.22481752569918, 12659.71039069907),
        "hidden_layers.0.bias": (0.0, 0.0),
        "hidden_layers.1.weight": (11.879954440219876, 2259.281116640177),
        "hidden_layers.1.bias": (0.0, 0.0),
        "classifier.weight": (-0.6065965296693321, 77.46474713446878),
        "classifier.bias": (0.0, 0.0),
    },
    "mnist-mlp-student": {
        "hidden_layers.0.weight": (-19.588311201099508, 3161.1856624325656),
        "hidden_layers.0.bias": (0.0, 0.0),
        "classifier.weight": (1.0502802237369906, 81.3476859049606),
        "classifier.bias": (0.0, 0.0),
    },
    "cifar10-cnn-teacher": {
        "convs.0.weight": (-9.826039678991947, 758.375422261568),
        "convs.0.bias": (0.0, 0.0),
        "convs.1.weight": (8.583423967483881, 2444.4487116428027),
        "convs.1.bias": (0.0, 0.0),
        "convs.2.weight": (-0.17998226522490768, 1736.2263898416734),
        "convs.2.bias": (0.0, 0.0),
        "convs.3.weight": (0.24717975369730993, 874.9558568424372),
        "convs.3.bias": (0.0, 0.0),
        "fc_layers.0.weight": (17.957515771134602, 26153.36738599923),
        "fc_layers.0.bias": (0.0, 0.0),
        "classifier.weight": (-0.6480275350731972, 177.7282399097203),
        "classifier.bias": (0.0, 0.0),
    },
    "cifar10-cnn-student": {
        "convs.0.weight": (2.598841022903798, 94.03385692680604),
        "convs.0.bias": (0.0, 0.0),
        "convs.1.weight": (2.6177549639360222, 211.9718916750753),
        "convs.1.bias": (0.0, 0.0),
        "fc_layers.0.weight": (-32.672541258451716, 9244.514819530605),
        "fc_layers.0.bias": (0.0, 0.0),
        "classifier.weight": (-6.337792577488017, 125.28166430901501),
        "classifier.bias": (0.0, 0.0),
    },
}
# preset -> (sum, sum of absolute values) of the logits of `_pixels(preset)` in eval mode.
PINNED_LOGITS = {
    "mnist-mlp-teacher": (-4.043496310710907, 27.94014137983322),
    "mnist-mlp-student": (3.623206600546837, 33.07750125229359),
    "cifar10-cnn-teacher": (-1.6386788338422775, 63.93728365004063),
    "cifar10-cnn-student": (-28.00631034374237, 44.05889743566513),
}
# A training step with dropout (seed 0 to build, seed 3 for the masks): logits sums and gradients' absolute sums.
PINNED_DROPOUT_STEP = {
    "mlp": (
        (-3.341894842684269, 57.83097439259291),
        {
            "hidden_layers.0.weight": 754.568869145865,
            "hidden_layers.0.bias": 1.018139239342,
            "hidden_layers.1.weight": 17.445511552098,
            "hidden_layers.1.bias": 0.596599536133,
            "classifier.weight": 13.087537799147,
            "classifier.bias": 0.877854607999,
        },
    ),
    "cnn": (
        (18.37403756380081, 94.177639991045),
        {
            "convs.0.weight": 28.563473542803,
            "convs.0.bias": 1.228424447472,
            "convs.1.weight": 92.340755097335,
            "convs.1.bias": 1.853915701155,
            "fc_layers.0.weight": 491.465089120897,
            "fc_layers.0.bias": 1.091361656785,
            "classifier.weight": 36.066447963916,
            "classifier.bias": 1.645635275636,
        },
    ),
}
RTOL = 1e-6


def _close(value: float, pinned: float) -> bool:
    return value == pytest.approx(pinned, rel=RTOL, abs=1e-9)


def _pixels(preset: str, batch_size: int = 4, seed: int = 1) -> torch.Tensor:
    shape = (1, 28, 28) if preset.startswith("mnist") else (3, 32, 32)
    return torch.randn(batch_size, *shape, generator=torch.Generator().manual_seed(seed))


def _sums(tensor: torch.Tensor) -> tuple[float, float]:
    tensor = tensor.detach().double()
    return tensor.sum().item(), tensor.abs().sum().item()


@pytest.mark.parametrize("preset", sorted(PINNED_WEIGHTS))
def test_seeded_preset_keeps_its_initial_weights(preset):
    torch.manual_seed(0)
    state_dict = model_from_preset(preset).state_dict()
    # The keys of saved checkpoints, in order: the checkpointing blocks hold no parameters.
    assert list(state_dict) == list(PINNED_WEIGHTS[preset])
    for key, (pinned_sum, pinned_abs_sum) in PINNED_WEIGHTS[preset].items():
        value_sum, abs_sum = _sums(state_dict[key])
        assert _close(value_sum, pinned_sum) and _close(abs_sum, pinned_abs_sum), key


def _kaiming_init_weights(self, module):
    """The initialisation of the earlier code, written with torch's own He initialisation."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nonlinearity = "linear" if module is getattr(self, "classifier", None) else "relu"
        init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity=nonlinearity)
        if module.bias is not None:
            init.zeros_(module.bias)


@pytest.mark.parametrize("preset", sorted(PINNED_WEIGHTS))
def test_initialisation_is_bit_for_bit_kaiming_normal(preset):
    torch.manual_seed(0)
    model = model_from_preset(preset)
    model_class = type(model)
    reference_class = type(f"Kaiming{model_class.__name__}", (model_class,), {"_init_weights": _kaiming_init_weights})
    torch.manual_seed(0)
    reference = reference_class(model.config)
    for (key, value), (reference_key, reference_value) in zip(
        model.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        assert key == reference_key and torch.equal(value, reference_value), key


def _plain_forward(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The reference models' forward pass in plain torch calls on their weights."""
    weights = model.state_dict()
    hidden = pixel_values
    if isinstance(model, CNNForImageClassification):
        config = model.config
        for index in range(len(config.conv_channels)):
            hidden = F.relu(
                F.conv2d(
                    hidden,
                    weights[f"convs.{index}.weight"],
                    weights[f"convs.{index}.bias"],
                    padding=config.kernel_size // 2,
                )
            )
            if index in config.pool_after:
                hidden = F.max_pool2d(hidden, kernel_size=2, stride=2)
        prefix, count = "fc_layers", len(config.classifier_hidden_sizes)
    else:
        prefix, count = "hidden_layers", len(model.config.hidden_sizes)
    hidden = hidden.flatten(start_dim=1)
    for index in range(count):
        hidden = F.relu(F.linear(hidden, weights[f"{prefix}.{index}.weight"], weights[f"{prefix}.{index}.bias"]))
    return F.linear(hidden, weights["classifier.weight"], weights["classifier.bias"])


@pytest.mark.parametrize("preset", sorted(PINNED_LOGITS))
def test_seeded_forward_is_the_plain_computation(preset):
    torch.manual_seed(0)
    model = model_from_preset(preset).eval()
    pixel_values = _pixels(preset)
    with torch.no_grad():
        logits = model(pixel_values).logits
        assert torch.equal(logits, _plain_forward(model, pixel_values))
    value_sum, abs_sum = _sums(logits)
    assert _close(value_sum, PINNED_LOGITS[preset][0]) and _close(abs_sum, PINNED_LOGITS[preset][1])


@pytest.mark.parametrize("family", sorted(PINNED_DROPOUT_STEP))
def test_seeded_training_step_with_dropout_keeps_its_gradients(family):
    if family == "mlp":
        config, shape = MLPConfig(hidden_sizes=[32, 16], dropout=0.3), (1, 28, 28)
        model_class = MLPForImageClassification
    else:
        config, shape = (
            CNNConfig(conv_channels=[4, 8], pool_after=[0, 1], classifier_hidden_sizes=[16], dropout=0.3),
            (3, 32, 32),
        )
        model_class = CNNForImageClassification
    torch.manual_seed(0)
    model = model_class(config).train()
    torch.manual_seed(3)  # the dropout masks
    pixel_values = torch.randn(5, *shape, generator=torch.Generator().manual_seed(2))
    output = model(pixel_values, labels=torch.arange(5))
    output.loss.backward()
    (pinned_sum, pinned_abs_sum), pinned_gradients = PINNED_DROPOUT_STEP[family]
    value_sum, abs_sum = _sums(output.logits)
    assert _close(value_sum, pinned_sum) and _close(abs_sum, pinned_abs_sum)
    for name, parameter in model.named_parameters():
        # The pinned gradient sums were rounded to 12 decimals.
        assert parameter.grad.double().abs().sum().item() == pytest.approx(pinned_gradients[name], rel=RTOL), name
