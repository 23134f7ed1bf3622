"""Tests of the reference models (hf_kd.models): presets, Auto classes, remote code, image processor, pipeline."""

import inspect
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    pipeline,
)
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention

import hf_kd.models as models
from hf_kd.models import (
    CNNConfig,
    CNNForImageClassification,
    HfKdImageProcessor,
    MLPConfig,
    MLPForImageClassification,
    config_from_preset,
    image_processor_for_preset,
    model_from_preset,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

EXPECTED_PARAMETERS = {
    "mnist-mlp-teacher": 355_110,
    "mnist-mlp-student": 79_510,
    "cifar10-cnn-teacher": 1_186_986,
    "cifar10-cnn-student": 267_738,
}
INPUT_SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def _input_shape(preset: str) -> tuple[int, int, int]:
    return INPUT_SHAPES[preset.split("-")[0]]


def _seeded_model(preset: str, seed: int = 0):
    torch.manual_seed(seed)
    return model_from_preset(preset).eval()


def _save_with_processor(preset: str, directory: Path, seed: int = 0):
    model = _seeded_model(preset, seed)
    model.save_pretrained(directory)
    image_processor_for_preset(preset).save_pretrained(directory)
    return model


# --------------------------------------------------------------------------------------------------------- presets


@pytest.mark.parametrize("preset", sorted(EXPECTED_PARAMETERS))
def test_preset_parameter_counts(preset):
    model = model_from_preset(preset)
    assert model.num_parameters() == EXPECTED_PARAMETERS[preset]
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMETERS[preset]


def test_preset_names_and_classes():
    assert models.PRESET_NAMES == tuple(EXPECTED_PARAMETERS)
    assert isinstance(config_from_preset("mnist-mlp-teacher"), MLPConfig)
    assert isinstance(config_from_preset("cifar10-cnn-student"), CNNConfig)
    assert isinstance(model_from_preset("mnist-mlp-student"), MLPForImageClassification)
    assert isinstance(model_from_preset("cifar10-cnn-teacher"), CNNForImageClassification)
    # The default configurations are the teachers.
    assert MLPForImageClassification(MLPConfig()).num_parameters() == EXPECTED_PARAMETERS["mnist-mlp-teacher"]
    assert CNNForImageClassification(CNNConfig()).num_parameters() == EXPECTED_PARAMETERS["cifar10-cnn-teacher"]


def test_cnn_teacher_layer_order():
    model = model_from_preset("cifar10-cnn-teacher")
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in model.convs] == [
        (3, 128, (3, 3), (1, 1)),
        (128, 64, (3, 3), (1, 1)),
        (64, 64, (3, 3), (1, 1)),
        (64, 32, (3, 3), (1, 1)),
    ]
    assert model.config.pool_after == [1, 3]
    assert [(fc.in_features, fc.out_features) for fc in model.fc_layers] == [(2048, 512)]
    assert (model.classifier.in_features, model.classifier.out_features) == (512, 10)
    assert model.dropout.p == 0.1


def test_unknown_preset_lists_valid_names():
    for function in (config_from_preset, model_from_preset, image_processor_for_preset):
        with pytest.raises(ValueError, match="Unknown preset 'mnist-mlp'") as error:
            function("mnist-mlp")
        for name in EXPECTED_PARAMETERS:
            assert name in str(error.value)


def test_preset_overrides_and_labels():
    config = config_from_preset("cifar10-cnn-student", dropout=0.3)
    assert config.dropout == 0.3
    assert config.id2label[0] == "airplane" and config.label2id["truck"] == 9
    # A different number of labels drops the preset's 10 names instead of contradicting them.
    config = config_from_preset("mnist-mlp-student", num_labels=3)
    assert config.num_labels == 3
    assert model_from_preset("mnist-mlp-student", num_labels=3).classifier.out_features == 3
    # The preset itself is not modified by overrides.
    assert config_from_preset("mnist-mlp-student").num_labels == 10
    assert config_from_preset("mnist-mlp-student").hidden_sizes == [100]


# ------------------------------------------------------------------------------------------- forward and outputs


def test_mlp_forward_outputs_and_hidden_states():
    model = _seeded_model("mnist-mlp-teacher")
    pixel_values = torch.randn(5, 1, 28, 28)
    labels = torch.tensor([0, 1, 2, 3, 9])

    output = model(pixel_values)
    assert isinstance(output, ImageClassifierOutputWithNoAttention)
    assert output.loss is None and output.hidden_states is None
    assert output.logits.shape == (5, 10)

    output = model(pixel_values, labels=labels, output_hidden_states=True)
    torch.testing.assert_close(output.loss, torch.nn.functional.cross_entropy(output.logits, labels))
    hidden_states = output.hidden_states
    assert [tuple(h.shape) for h in hidden_states] == [(5, 784), (5, 400), (5, 400), (5, 100), (5, 100)]
    torch.testing.assert_close(hidden_states[0], pixel_values.flatten(1))
    # Pre-activations are the Linear outputs (with negative values), block outputs their ReLU.
    torch.testing.assert_close(hidden_states[1], model.hidden_layers[0](hidden_states[0]))
    for pre_activation, block_output in zip(hidden_states[1::2], hidden_states[2::2], strict=True):
        assert (pre_activation < 0).any()
        torch.testing.assert_close(block_output, torch.relu(pre_activation))
    torch.testing.assert_close(output.logits, model.classifier(hidden_states[-1]))

    as_tuple = model(pixel_values, labels=labels, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    torch.testing.assert_close(as_tuple[1], output.logits)


def test_cnn_forward_outputs_and_hidden_states():
    model = _seeded_model("cifar10-cnn-teacher")
    pixel_values = torch.randn(2, 3, 32, 32)
    labels = torch.tensor([4, -100])  # -100 is ignored, as everywhere in transformers

    output = model(pixel_values, labels=labels, output_hidden_states=True)
    assert isinstance(output, ImageClassifierOutputWithNoAttention)
    assert output.logits.shape == (2, 10)
    torch.testing.assert_close(output.loss, torch.nn.functional.cross_entropy(output.logits[:1], labels[:1]))
    shapes = [tuple(h.shape[1:]) for h in output.hidden_states]
    assert shapes == [
        (3, 32, 32),
        (128, 32, 32), (128, 32, 32),  # conv 3->128, ReLU
        (64, 32, 32), (64, 16, 16),  # conv 128->64, ReLU + pool
        (64, 16, 16), (64, 16, 16),  # conv 64->64, ReLU
        (32, 16, 16), (32, 8, 8),  # conv 64->32, ReLU + pool
        (512,), (512,),  # FC 2048->512, ReLU (dropout off in eval)
    ]  # fmt: skip
    hidden_states = output.hidden_states
    torch.testing.assert_close(hidden_states[2], torch.relu(hidden_states[1]))
    torch.testing.assert_close(hidden_states[4], torch.nn.functional.max_pool2d(torch.relu(hidden_states[3]), 2))
    torch.testing.assert_close(hidden_states[-1], torch.relu(hidden_states[-2]))

    model.config.output_hidden_states = True  # the config default is honoured
    assert len(model(pixel_values).hidden_states) == 11
    student = _seeded_model("cifar10-cnn-student")
    assert len(student(pixel_values, output_hidden_states=True).hidden_states) == 1 + 2 * (2 + 1)


def test_dropout_only_in_training_mode():
    torch.manual_seed(0)
    model = model_from_preset("cifar10-cnn-student", dropout=0.5)
    pixel_values = torch.randn(4, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model(pixel_values).logits, model(pixel_values).logits)
    model.train()
    assert not torch.equal(model(pixel_values).logits, model(pixel_values).logits)


def test_forward_takes_no_kwargs_so_the_trainer_divides_the_loss():
    for model_class in (MLPForImageClassification, CNNForImageClassification):
        parameters = inspect.signature(model_class.forward).parameters
        assert not any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        assert list(parameters)[:3] == ["self", "pixel_values", "labels"]
        assert model_class.accepts_loss_kwargs is False


def test_gradients_flow_to_every_parameter():
    for preset in ("mnist-mlp-student", "cifar10-cnn-student"):
        model = _seeded_model(preset).train()
        output = model(torch.randn(3, *_input_shape(preset)), labels=torch.tensor([0, 1, 2]))
        output.loss.backward()
        for name, parameter in model.named_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_kaiming_initialisation():
    torch.manual_seed(0)
    model = model_from_preset("mnist-mlp-teacher")
    first = model.hidden_layers[0].weight
    # He (fan_in, ReLU gain): std sqrt(2 / fan_in), not the PreTrainedModel default of 0.02.
    assert abs(first.std().item() - (2 / 784) ** 0.5) < 0.002
    assert abs(model.classifier.weight.std().item() - (1 / 100) ** 0.5) < 0.01
    assert all(torch.count_nonzero(layer.bias) == 0 for layer in [*model.hidden_layers, model.classifier])
    conv = model_from_preset("cifar10-cnn-teacher").convs[1]
    assert abs(conv.weight.std().item() - (2 / (128 * 9)) ** 0.5) < 0.002


# ------------------------------------------------------------------------------------------- save / load / Hub


@pytest.mark.parametrize("preset", sorted(EXPECTED_PARAMETERS))
def test_save_and_load_through_auto_classes(tmp_path, preset):
    model = _save_with_processor(preset, tmp_path)
    files = {path.name for path in tmp_path.iterdir()}
    family = "mlp" if "mlp" in preset else "cnn"
    assert {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        f"configuration_{family}.py",
        f"modeling_{family}.py",
        "image_processing_hf_kd.py",
    } <= files
    config_json = json.loads((tmp_path / "config.json").read_text())
    assert config_json["model_type"] == f"hf_kd_{family}"
    assert config_json["auto_map"] == {
        "AutoConfig": f"configuration_{family}.{family.upper()}Config",
        "AutoModelForImageClassification": f"modeling_{family}.{family.upper()}ForImageClassification",
    }
    processor_json = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert processor_json["auto_map"] == {"AutoImageProcessor": "image_processing_hf_kd.HfKdImageProcessor"}

    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config) is type(model.config)
    assert config.to_dict() == model.config.to_dict() | {"_name_or_path": config._name_or_path}

    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    # from_pretrained must not re-initialise loaded weights: every tensor is identical.
    original_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert original_state.keys() == loaded_state.keys()
    for key in original_state:
        assert torch.equal(original_state[key], loaded_state[key]), key
    pixel_values = torch.randn(4, *_input_shape(preset))
    with torch.no_grad():
        assert torch.equal(model(pixel_values).logits, loaded(pixel_values).logits)

    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(processor) is HfKdImageProcessor
    saved_settings = {key: value for key, value in processor.to_dict().items() if key != "auto_map"}
    assert saved_settings == image_processor_for_preset(preset).to_dict()


_REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys


    class BlockHfKd(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hf_kd" or name.startswith("hf_kd."):
                raise ImportError(f"{name} is blocked: this process must run without hf_kd")
            return None


    sys.meta_path.insert(0, BlockHfKd())
    for name in [name for name in sys.modules if name == "hf_kd" or name.startswith("hf_kd.")]:
        del sys.modules[name]
    try:
        import hf_kd  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("hf_kd is still importable")

    import torch
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification
    from PIL import Image

    report = {}
    for directory in sys.argv[1:]:
        config = AutoConfig.from_pretrained(directory, trust_remote_code=True)
        model = AutoModelForImageClassification.from_pretrained(directory, trust_remote_code=True).eval()
        processor = AutoImageProcessor.from_pretrained(directory, trust_remote_code=True)
        image = Image.open(f"{directory}/image.png")
        pixel_values = processor(image, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            logits = model(torch.load(f"{directory}/pixel_values.pt")).logits
        torch.save({"logits": logits, "pixel_values": pixel_values}, f"{directory}/remote.pt")
        report[directory] = {
            "config": type(config).__name__,
            "model": type(model).__name__,
            "model_module": type(model).__module__,
            "processor": type(processor).__name__,
            "processor_module": type(processor).__module__,
        }
    report["hf_kd_modules"] = [name for name in sys.modules if name.startswith("hf_kd")]
    print("REPORT" + json.dumps(report))
    """
)


@pytest.mark.slow
def test_trust_remote_code_loads_without_hf_kd(tmp_path):
    """A saved model and processor load with `trust_remote_code=True` in a process that cannot import hf_kd."""
    rng = np.random.default_rng(0)
    expected = {}
    for preset in ("mnist-mlp-student", "cifar10-cnn-student"):
        directory = tmp_path / preset.replace("-", "_")
        model = _save_with_processor(preset, directory, seed=1)
        pixel_values = torch.randn(3, *_input_shape(preset))
        torch.save(pixel_values, directory / "pixel_values.pt")
        image = PIL.Image.fromarray(rng.integers(0, 256, size=(40, 30, 3), dtype=np.uint8))
        image.save(directory / "image.png")
        with torch.no_grad():
            logits = model(pixel_values).logits
        local_pixel_values = image_processor_for_preset(preset)(image, return_tensors="pt")["pixel_values"]
        expected[str(directory)] = (preset, logits, local_pixel_values)

    env = {
        **os.environ,
        "HF_MODULES_CACHE": str(tmp_path / "modules_cache"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", _REMOTE_CODE_SCRIPT, *expected],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report_line = next(line for line in result.stdout.splitlines() if line.startswith("REPORT"))
    report = json.loads(report_line[len("REPORT") :])
    assert report.pop("hf_kd_modules") == []

    for directory, (preset, logits, local_pixel_values) in expected.items():
        family = "MLP" if "mlp" in preset else "CNN"
        info = report[directory]
        assert info["config"] == f"{family}Config"
        assert info["model"] == f"{family}ForImageClassification"
        assert info["processor"] == "HfKdImageProcessor"
        # The classes come from the files copied next to the weights, not from an installed package.
        assert info["model_module"].startswith("transformers_modules.")
        assert info["processor_module"].startswith("transformers_modules.")
        remote = torch.load(Path(directory) / "remote.pt")
        assert torch.equal(remote["logits"], logits)
        assert torch.equal(remote["pixel_values"], local_pixel_values)


# ------------------------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    ("preset", "shape", "expected"),
    [
        ("mnist-mlp-student", (2, 3, 32, 32), "(batch_size, 1, 28, 28)"),
        ("mnist-mlp-teacher", (2, 784), "(batch_size, 1, 28, 28)"),
        ("cifar10-cnn-student", (2, 1, 28, 28), "(batch_size, 3, 32, 32)"),
        ("cifar10-cnn-teacher", (3, 32, 32), "(batch_size, 3, 32, 32)"),
    ],
)
def test_wrong_pixel_values_shape(preset, shape, expected):
    model = model_from_preset(preset)
    with pytest.raises(ValueError) as error:
        model(torch.zeros(shape))
    message = str(error.value)
    assert "pixel_values" in message and expected in message and str(shape) in message


def test_missing_pixel_values():
    with pytest.raises(ValueError, match="pixel_values"):
        model_from_preset("mnist-mlp-student")()


@pytest.mark.parametrize(
    ("config_class", "kwargs", "field"),
    [
        (MLPConfig, {"num_labels": 0}, "num_labels"),
        (MLPConfig, {"num_labels": -3}, "num_labels"),
        (MLPConfig, {"hidden_sizes": []}, "hidden_sizes"),
        (MLPConfig, {"hidden_sizes": [400, 0]}, "hidden_sizes[1]"),
        (MLPConfig, {"hidden_sizes": [-5]}, "hidden_sizes[0]"),
        (MLPConfig, {"dropout": -0.1}, "dropout"),
        (MLPConfig, {"dropout": 1.0}, "dropout"),
        (MLPConfig, {"num_channels": 0}, "num_channels"),
        (MLPConfig, {"image_size": 0}, "image_size"),
        (MLPConfig, {"image_size": [28, 28, 28]}, "image_size"),
        (CNNConfig, {"num_labels": 0}, "num_labels"),
        (CNNConfig, {"conv_channels": []}, "conv_channels"),
        (CNNConfig, {"conv_channels": [16, -1]}, "conv_channels[1]"),
        (CNNConfig, {"pool_after": [0, 7]}, "pool_after"),
        (CNNConfig, {"pool_after": [1, 1]}, "pool_after"),
        (CNNConfig, {"kernel_size": 4}, "kernel_size"),
        (CNNConfig, {"kernel_size": 0}, "kernel_size"),
        (CNNConfig, {"classifier_hidden_sizes": [0]}, "classifier_hidden_sizes[0]"),
        (CNNConfig, {"dropout": 1.5}, "dropout"),
        (CNNConfig, {"image_size": 2}, "pool_after"),  # two pools shrink 2x2 to nothing
    ],
)
def test_invalid_config_values(config_class, kwargs, field):
    with pytest.raises(ValueError) as error:
        config_class(**kwargs)
    assert f"`{field}`" in str(error.value)


def test_invalid_preset_override_is_reported():
    with pytest.raises(ValueError, match="`dropout`"):
        model_from_preset("cifar10-cnn-teacher", dropout=2.0)


def test_valid_config_variants():
    assert CNNConfig(classifier_hidden_sizes=[]).flattened_size == 2048  # linear head straight on the features
    model = CNNForImageClassification(CNNConfig(image_size=[20, 12], pool_after=[0, 1, 2]))
    assert model(torch.zeros(1, 3, 20, 12)).logits.shape == (1, 10)
    config = MLPConfig(num_channels=3, image_size=[4, 6], hidden_sizes=(8,), num_labels=2)
    assert config.input_size == 72 and config.hidden_sizes == [8]
    assert MLPForImageClassification(config)(torch.zeros(2, 3, 4, 6)).logits.shape == (2, 2)


# -------------------------------------------------------------------------------------------- image processor


def _random_image(mode: str, size: tuple[int, int], seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"L": (), "RGB": (3,), "RGBA": (4,)}[mode]
    array = rng.integers(0, 256, size=(size[1], size[0], *channels), dtype=np.uint8)
    return PIL.Image.fromarray(array, mode=mode)


def test_mnist_processor_values():
    processor = image_processor_for_preset("mnist-mlp-student")
    image = _random_image("L", (28, 28))
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 1, 28, 28) and pixel_values.dtype == torch.float32
    expected = (np.asarray(image, dtype=np.float32) / 255 - 0.1307) / 0.3081
    np.testing.assert_allclose(pixel_values[0, 0].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_mnist_processor_converts_colour_and_size():
    processor = image_processor_for_preset("mnist-mlp-student")
    colour = _random_image("RGB", (56, 40))
    pixel_values = processor([colour, _random_image("RGBA", (28, 28))], return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (2, 1, 28, 28)
    expected = processor(colour.convert("L").resize((28, 28), PIL.Image.BILINEAR))["pixel_values"][0]
    np.testing.assert_array_equal(pixel_values[0].numpy(), expected)
    # A uint8 array gives what the same image as PIL gives, including PIL's grayscale rounding.
    small = _random_image("RGB", (28, 28))
    np.testing.assert_array_equal(processor(np.asarray(small))["pixel_values"], processor(small)["pixel_values"])
    # (height, width) arrays, alone or in a list, are grayscale images.
    gray = np.asarray(_random_image("L", (28, 28)))
    assert processor([gray, gray, gray])["pixel_values"].shape == (3, 1, 28, 28)
    assert processor(gray)["pixel_values"].shape == (1, 1, 28, 28)


def test_cifar10_processor_values():
    processor = image_processor_for_preset("cifar10-cnn-teacher")
    image = _random_image("RGB", (32, 32))
    pixel_values = processor([image, _random_image("L", (32, 32))], return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (2, 3, 32, 32) and pixel_values.dtype == torch.float32
    mean = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)[:, None, None]
    std = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)[:, None, None]
    expected = (np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255 - mean) / std
    np.testing.assert_allclose(pixel_values[0].numpy(), expected, rtol=1e-5, atol=1e-5)
    # A grayscale image becomes three identical channels before normalisation.
    denormalised = pixel_values[1].numpy() * std + mean
    np.testing.assert_allclose(denormalised[0], denormalised[2], atol=1e-5)


def test_processor_output_without_return_tensors_is_a_float32_batch():
    processor = image_processor_for_preset("cifar10-cnn-student")
    output = processor([_random_image("RGB", (32, 32), seed) for seed in range(4)])
    assert isinstance(output["pixel_values"], np.ndarray)
    assert output["pixel_values"].shape == (4, 3, 32, 32) and output["pixel_values"].dtype == np.float32


def test_processor_rejects_contradictory_options():
    with pytest.raises(ValueError, match="do_convert_grayscale"):
        HfKdImageProcessor(do_convert_grayscale=True, do_convert_rgb=True)(_random_image("L", (8, 8)))
    with pytest.raises(ValueError, match="image_mean"):
        HfKdImageProcessor(image_mean=[0.5, 0.5], image_std=[0.5, 0.5])(_random_image("RGB", (8, 8)))


def test_processor_batch_is_fast():
    import time

    processor = image_processor_for_preset("mnist-mlp-student")
    images = [_random_image("L", (28, 28), seed) for seed in range(2000)]
    start = time.perf_counter()
    pixel_values = processor(images)["pixel_values"]
    elapsed = time.perf_counter() - start
    assert pixel_values.shape == (2000, 1, 28, 28)
    # About 30 microseconds an image here; the bound only catches a per-pixel Python loop.
    assert elapsed < 2.0, f"{elapsed:.2f} s for 2000 images"


# ---------------------------------------------------------------------------------------------------- pipeline


def test_pipeline_loads_saved_model_without_prompting(tmp_path, monkeypatch):
    """`pipeline(model=dir)` must not ask about remote code: hf_kd's classes are registered locally."""
    prompts = []
    monkeypatch.setattr("builtins.input", lambda *args: prompts.append(args) or "n")
    model = _save_with_processor("cifar10-cnn-student", tmp_path)
    images = [_random_image("RGB", (48, 40), seed) for seed in range(3)]

    classifier = pipeline("image-classification", model=str(tmp_path), device="cpu")
    predictions = classifier(images, top_k=1)

    assert prompts == []
    assert type(classifier.model) is CNNForImageClassification
    assert type(classifier.image_processor) is HfKdImageProcessor
    with torch.no_grad():
        logits = model(image_processor_for_preset("cifar10-cnn-student")(images, return_tensors="pt")["pixel_values"])
    expected = [models.CIFAR10_LABELS[index] for index in logits.logits.argmax(-1).tolist()]
    assert [prediction[0]["label"] for prediction in predictions] == expected


# ------------------------------------------------------------------------------------------------- real MNIST


def _mnist_parquet(split: str) -> Path | None:
    roots = [os.environ.get("HF_KD_MNIST_DIR"), REPO_ROOT.parent / "shared" / "data" / "mnist"]
    for root in filter(None, roots):
        for pattern in (f"mnist/{split}-*.parquet", f"{split}-*.parquet"):
            found = sorted(Path(root).glob(pattern))
            if found:
                return found[0]
    return None


def _load_mnist(split: str, count: int) -> tuple[list[PIL.Image.Image], torch.Tensor]:
    import pyarrow.parquet as pq

    table = pq.read_table(_mnist_parquet(split)).slice(0, count)
    images = [PIL.Image.open(io.BytesIO(cell["bytes"])) for cell in table.column("image").to_pylist()]
    return images, torch.tensor(table.column("label").to_pylist())


@pytest.mark.skipif(
    _mnist_parquet("train") is None or _mnist_parquet("test") is None,
    reason="MNIST parquet files not found (set HF_KD_MNIST_DIR or provide ../shared/data/mnist)",
)
def test_pipeline_classifies_real_mnist_digits(tmp_path):
    train_images, train_labels = _load_mnist("train", 6000)
    test_images, test_labels = _load_mnist("test", 300)
    processor = image_processor_for_preset("mnist-mlp-student")
    train_pixels = processor(train_images, return_tensors="pt")["pixel_values"]

    torch.manual_seed(0)
    model = model_from_preset("mnist-mlp-student").train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    # One thread: these steps are too small to share, and on a busy machine two threads ran them 7x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(3):
            for batch in torch.randperm(len(train_labels)).split(64):
                loss = model(train_pixels[batch], labels=train_labels[batch]).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)

    with torch.no_grad():
        direct = model(processor(test_images, return_tensors="pt")["pixel_values"]).logits.argmax(-1)
    accuracy = (direct == test_labels).float().mean().item()
    assert accuracy > 0.8, f"accuracy {accuracy:.3f} after a short training run"

    classifier = pipeline("image-classification", model=str(tmp_path), device="cpu")
    assert type(classifier.image_processor) is HfKdImageProcessor
    predictions = classifier(test_images, top_k=1)
    piped = torch.tensor([int(prediction[0]["label"]) for prediction in predictions])
    assert len(piped) == len(test_images) >= 200
    assert torch.equal(piped, direct)
    # The raw RGB versions of the same digits classify the same (grayscale conversion in the processor).
    rgb_predictions = classifier([image.convert("RGB") for image in test_images[:50]], top_k=1)
    assert [int(p[0]["label"]) for p in rgb_predictions] == direct[:50].tolist()
