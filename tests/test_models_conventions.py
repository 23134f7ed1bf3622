"""The reference models against `transformers`' own model conventions: `config.problem_type`, the base model and
`AutoModel`, gradient checkpointing and `_no_split_modules` (what the library's common model tests check)."""

import warnings

import pytest
import torch
from torch import nn
from transformers import AutoModel, AutoModelForImageClassification

from hf_kd.models import (
    CNNConfig,
    CNNForImageClassification,
    CNNModel,
    MLPConfig,
    MLPForImageClassification,
    MLPModel,
    model_from_preset,
)

# Small configurations of both families, with dropout so that checkpointing has random masks to reproduce.
FAMILIES = {
    "mlp": (MLPConfig, MLPModel, MLPForImageClassification, {"hidden_sizes": [32, 16], "dropout": 0.2}),
    "cnn": (
        CNNConfig,
        CNNModel,
        CNNForImageClassification,
        {"conv_channels": [4, 8], "pool_after": [0, 1], "classifier_hidden_sizes": [16], "dropout": 0.2},
    ),
}
INPUT_SHAPES = {"mlp": (1, 28, 28), "cnn": (3, 32, 32)}


def _model(family: str, seed: int = 0, **overrides) -> MLPForImageClassification | CNNForImageClassification:
    config_class, _, model_class, kwargs = FAMILIES[family]
    torch.manual_seed(seed)
    return model_class(config_class(**(kwargs | overrides)))


def _pixels(family: str, batch_size: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch_size, *INPUT_SHAPES[family], generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ problem_type


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_single_label_loss_is_the_plain_cross_entropy(family):
    """The default path: the same cross-entropy, bit for bit, and `problem_type` recorded as transformers does."""
    model = _model(family).eval()
    assert model.config.problem_type is None
    labels = torch.tensor([3, 0, -100, 9, 9, 1])
    output = model(_pixels(family), labels=labels)
    assert torch.equal(output.loss, nn.functional.cross_entropy(output.logits, labels))
    assert model.config.problem_type == "single_label_classification"


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("problem_type", ["multi_label_classification", None])
def test_multi_label_loss_is_binary_cross_entropy(family, problem_type):
    # Unset, float labels with several classes mean multi-label, as in transformers' classification heads.
    model = _model(family, problem_type=problem_type).eval()
    labels = torch.randint(0, 2, (6, 10), generator=torch.Generator().manual_seed(2)).float()
    output = model(_pixels(family), labels=labels)
    probabilities = torch.sigmoid(output.logits)
    expected = -(labels * probabilities.log() + (1 - labels) * (1 - probabilities).log()).mean()
    torch.testing.assert_close(output.loss, expected)
    assert model.config.problem_type == "multi_label_classification"


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("problem_type", ["regression", None])
def test_regression_with_one_label_is_mean_squared_error_and_learns(family, problem_type):
    # Unset, `num_labels=1` means regression, as in transformers (the old cross-entropy over one class was always 0).
    model = _model(family, num_labels=1, problem_type=problem_type, dropout=0.0).train()
    pixel_values = _pixels(family, batch_size=16)
    targets = torch.randn(16, generator=torch.Generator().manual_seed(3))  # to memorise

    output = model(pixel_values, labels=targets)
    assert output.logits.shape == (16, 1)
    torch.testing.assert_close(output.loss, ((output.logits[:, 0] - targets) ** 2).mean())
    assert model.config.problem_type == "regression"

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(10):
        loss = model(pixel_values, labels=targets).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0], losses


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_regression_with_several_outputs_is_mean_squared_error(family):
    model = _model(family, num_labels=3, problem_type="regression").eval()
    labels = torch.randn(6, 3)
    output = model(_pixels(family), labels=labels)
    torch.testing.assert_close(output.loss, ((output.logits - labels) ** 2).mean())


@pytest.mark.parametrize("config_class", [MLPConfig, CNNConfig])
def test_unknown_problem_type_is_refused_at_construction(config_class):
    with pytest.raises(ValueError, match="`problem_type`.*'multilabel'"):
        config_class(problem_type="multilabel")
    # transformers' own check: single-label needs at least two classes.
    with pytest.raises(ValueError, match="problem_type"):
        config_class(problem_type="single_label_classification", num_labels=1)


# ------------------------------------------------------------------------------------- base model and AutoModel


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_base_model_prefix_names_what_exists(family):
    model = _model(family)
    prefix = model.base_model_prefix
    # transformers' `base_model` is `getattr(model, base_model_prefix, model)`: the prefix is empty or a submodule.
    assert prefix == "" or isinstance(getattr(model, prefix, None), nn.Module)
    assert model.base_model is model


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_auto_model_is_the_feature_layers_and_loads_from_either_checkpoint(family, tmp_path):
    _, base_class, model_class, _ = FAMILIES[family]
    classifier = _model(family).eval()
    classifier.save_pretrained(tmp_path / "classifier")

    assert type(AutoModel.from_config(classifier.config)) is base_class
    base = AutoModel.from_pretrained(tmp_path / "classifier").eval()
    assert type(base) is base_class
    # The same parameter names and values as the classifier, less the classifier layer.
    classifier_state = classifier.state_dict()
    assert set(base.state_dict()) == {key for key in classifier_state if not key.startswith("classifier.")}
    for key, value in base.state_dict().items():
        assert torch.equal(value, classifier_state[key]), key

    pixel_values = _pixels(family)
    with torch.no_grad():
        features = base(pixel_values, output_hidden_states=True)
        expected = classifier(pixel_values, output_hidden_states=True)
    assert torch.equal(features.last_hidden_state, expected.hidden_states[-1])
    assert len(features.hidden_states) == len(expected.hidden_states)
    assert torch.equal(classifier.classifier(features.last_hidden_state), expected.logits)
    assert isinstance(base(pixel_values, return_dict=False), tuple)

    # The other way: a classifier from a saved base model keeps its features and initialises a new classifier.
    base.save_pretrained(tmp_path / "base")
    assert base.config.auto_map["AutoModel"] == f"modeling_{family}.{base_class.__name__}"
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "base")
    assert type(reloaded) is model_class
    for key, value in base.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


# -------------------------------------------------------------------------------------- gradient checkpointing


def _gradients(family: str, checkpointing_kwargs: dict | None):
    """Loss and gradients of one training step, with checkpointing enabled when `checkpointing_kwargs` is given,
    and how many times the weighted layers ran."""
    model = _model(family).train()
    runs = []
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.register_forward_hook(lambda *args: runs.append(1))
    if checkpointing_kwargs is not None:
        with warnings.catch_warnings():
            # transformers >= 5.x renames it `activation_checkpointing_enable` and deprecates the old name.
            warnings.simplefilter("ignore", FutureWarning)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing_kwargs)
    torch.manual_seed(5)  # the dropout masks
    output = model(_pixels(family), labels=torch.tensor([0, 1, 2, 3, 4, 5]), output_hidden_states=True)
    # Feature distillation back-propagates through the pre-activations too, which the checkpointed blocks return.
    loss = output.loss + sum(pre_activation.square().mean() for pre_activation in output.hidden_states[1::2])
    loss.backward()
    return loss, {name: parameter.grad for name, parameter in model.named_parameters()}, len(runs), model


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(family, use_reentrant):
    loss, gradients, runs, _ = _gradients(family, None)
    checkpointed_loss, checkpointed_gradients, checkpointed_runs, model = _gradients(
        family, {"use_reentrant": use_reentrant}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        assert model.is_gradient_checkpointing
    # The blocks really are recomputed in the backward pass: every weighted layer but the classifier runs twice.
    assert checkpointed_runs == 2 * runs - 1
    assert torch.equal(checkpointed_loss, loss)
    # Every parameter gets its gradient, the first block's too (whose input, `pixel_values`, needs no gradient: the
    # reentrant checkpoint would otherwise skip it), and the same dropout masks give the same values.
    for name, gradient in gradients.items():
        assert checkpointed_gradients[name] is not None, name
        assert torch.equal(checkpointed_gradients[name], gradient), name


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_gradient_checkpointing_switches_on_and_off(family):
    model = _model(family)
    assert type(model).supports_gradient_checkpointing
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    # Through transformers' `GradientCheckpointingLayer`: one per block, all switched on.
    assert model.is_activation_checkpointing
    assert len(model.blocks) > 0 and all(block.gradient_checkpointing for block in model.blocks)
    model.eval()  # no backward pass to prepare for: no checkpoint, same logits
    with torch.no_grad():
        checkpointed = model(_pixels(family)).logits
    disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
    disable()
    assert not model.is_activation_checkpointing
    with torch.no_grad():
        assert torch.equal(model(_pixels(family)).logits, checkpointed)
    # The base models support it as well.
    base = AutoModel.from_config(model.config).train()
    enable = getattr(base, "activation_checkpointing_enable", None) or base.gradient_checkpointing_enable
    enable()
    base(_pixels(family)).last_hidden_state.sum().backward()
    assert all(parameter.grad is not None for parameter in base.parameters())


# ---------------------------------------------------------------------------------------------- device_map


@pytest.mark.parametrize("model_class", [MLPModel, MLPForImageClassification, CNNModel, CNNForImageClassification])
def test_no_split_modules_is_declared(model_class):
    # `None` is transformers' "device_map='auto' not supported" (its common tests skip the offload and parallelism
    # checks for it); the layers are leaves that can go to any device, hence an empty list.
    assert model_class._no_split_modules is not None
    assert list(model_class._no_split_modules) == []


def test_device_map_auto_splits_and_offloads(tmp_path):
    torch.manual_seed(0)
    model = model_from_preset("cifar10-cnn-teacher").eval()
    model.save_pretrained(tmp_path / "model")
    # 4.6 MB of "cpu" for a 4.7 MB model whose largest layer (fc_layers.0) takes 4.2 MB: accelerate keeps room for
    # that layer, so the first convolutions stay and the rest is offloaded to disk.
    loaded = AutoModelForImageClassification.from_pretrained(
        tmp_path / "model", device_map="auto", max_memory={"cpu": 4_600_000}, offload_folder=tmp_path / "offload"
    )
    assert set(loaded.hf_device_map.values()) == {"cpu", "disk"}
    assert loaded.hf_device_map["convs.0"] == "cpu" and loaded.hf_device_map["classifier"] == "disk"
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values).logits, model(pixel_values).logits)
