"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`) run on the reference models.

The tests come from transformers' source distribution, which ships `tests/test_modeling_common.py` and
`tests/test_configuration_common.py` but not the helper packages they import relatively (`tests/exporters`,
`tests/generation`, `tests/utils`). Point `HF_KD_TRANSFORMERS_TESTS` at a folder holding those two files (`.ci/run`
extracts them from `pip download --no-deps --no-binary :all: transformers==<installed version>`); without it, this
module is skipped.

The two files are imported as a package built in a temporary folder, with stand-ins for the missing helpers:

- `GenerationTesterMixin`: an empty class. The common tests only ask whether a tester inherits it, which for these
  models (they cannot `generate`) must be "no";
- `ExportTesterMixin`: an empty class, so the `torch.export` tests it holds do not run here (the source distribution
  does not ship them);
- `config_common_kwargs`: common `PreTrainedConfig` arguments with non-default values, chosen here, for
  `ConfigTester.check_config_arguments_init`.

Run with `-rs` to see each skip and its reason.
"""

import importlib
import os
import shutil
import sys
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import pytest
import torch
from transformers.models.auto import modeling_auto

from hf_kd.models import (
    CNNConfig,
    CNNForImageClassification,
    CNNModel,
    MLPConfig,
    MLPForImageClassification,
    MLPModel,
)

_COMMON_FILES = ("test_modeling_common.py", "test_configuration_common.py")
_SOURCE = os.environ.get("HF_KD_TRANSFORMERS_TESTS")
_PACKAGE = "hf_kd_transformers_common_tests"

_STAND_INS = {
    "exporters/test_export.py": (
        '"""Stand-in: the source distribution does not ship tests/exporters; no export test runs."""\n\n\n'
        "class ExportTesterMixin:\n    pass\n"
    ),
    "generation/test_utils.py": (
        '"""Stand-in: the reference models cannot generate; the common tests only check the inheritance."""\n\n\n'
        "class GenerationTesterMixin:\n    pass\n"
    ),
    "utils/test_configuration_utils.py": (
        '"""Stand-in: common config arguments set to non-default values (chosen by hf_kd)."""\n\n'
        "config_common_kwargs = {\n"
        '    "return_dict": False,\n'
        '    "output_hidden_states": True,\n'
        '    "dtype": "float16",\n'
        '    "problem_type": "regression",\n'
        '    "id2label": {0: "a", 1: "b", 2: "c"},\n'
        '    "label2id": {"a": 0, "b": 1, "c": 2},\n'
        '    "chunk_size_feed_forward": 5,\n'
        '    "architectures": ["BertModel"],\n'
        '    "finetuning_task": "translation",\n'
        "}\n"
    ),
}


def _import_common_tests():
    """`(test_modeling_common, test_configuration_common)`, or a skip reason."""
    if not _SOURCE:
        return None, (
            "HF_KD_TRANSFORMERS_TESTS is not set: point it at the tests/ folder of transformers' source distribution "
            "(.ci/run does)"
        )
    source = Path(_SOURCE)
    missing = [name for name in _COMMON_FILES if not (source / name).is_file()]
    if missing:
        return None, f"HF_KD_TRANSFORMERS_TESTS={_SOURCE} lacks {', '.join(missing)}"
    try:
        importlib.import_module("parameterized")  # a test requirement of transformers' common tests
    except ImportError:
        return None, "transformers' common tests need the `parameterized` package"
    root = Path(tempfile.mkdtemp(prefix="hf_kd_common_tests_"))
    package = root / _PACKAGE
    for relative, text in {"__init__.py": "", **_STAND_INS}.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(text)
    for name in _COMMON_FILES:
        shutil.copy(source / name, package / name)
    sys.path.insert(0, str(root))
    modeling = importlib.import_module(f"{_PACKAGE}.test_modeling_common")
    configuration = importlib.import_module(f"{_PACKAGE}.test_configuration_common")
    return (modeling, configuration), None


_MODULES, _SKIP_REASON = _import_common_tests()
if _MODULES is None:
    pytestmark = pytest.mark.skip(reason=_SKIP_REASON)
    ModelTesterMixin, ConfigTester, floats_tensor = object, None, None
else:
    ModelTesterMixin = _MODULES[0].ModelTesterMixin
    floats_tensor = _MODULES[0].floats_tensor
    ConfigTester = _MODULES[1].ConfigTester


class _ImageModelTester:
    """Builds small configurations and inputs, as the `*ModelTester` classes of transformers' model tests do."""

    config_class = None
    batch_size = 3
    num_channels = 2
    image_size = 8
    num_labels = 4
    is_training = True

    def __init__(self, parent):
        self.parent = parent

    def config_kwargs(self) -> dict:
        raise NotImplementedError

    def get_config(self):
        return self.config_class(
            num_channels=self.num_channels,
            image_size=self.image_size,
            num_labels=self.num_labels,
            **self.config_kwargs(),
        )

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        labels = torch.randint(0, self.num_labels, (self.batch_size,))
        return self.get_config(), pixel_values, labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}


class MLPModelTester(_ImageModelTester):
    config_class = MLPConfig
    hidden_sizes = [16, 12]

    def config_kwargs(self) -> dict:
        return {"hidden_sizes": self.hidden_sizes, "dropout": 0.1}

    # `hidden_states` are the flattened input, then each block's pre-activation and output (see the model's
    # `forward`). The common test checks the last two dimensions of `hidden_states[0]`, `(batch, input_size)`.
    @property
    def num_hidden_layers(self):
        return len(self.hidden_sizes)

    @property
    def expected_num_hidden_layers(self):
        return 1 + 2 * len(self.hidden_sizes)

    @property
    def seq_length(self):
        return self.batch_size

    @property
    def hidden_size(self):
        return self.num_channels * self.image_size * self.image_size


class CNNModelTester(_ImageModelTester):
    config_class = CNNConfig
    conv_channels = [4]
    classifier_hidden_sizes = [12]

    def config_kwargs(self) -> dict:
        return {
            "conv_channels": self.conv_channels,
            "pool_after": [0],
            "kernel_size": 3,
            "classifier_hidden_sizes": self.classifier_hidden_sizes,
            "dropout": 0.1,
        }

    # `hidden_states[0]` is `pixel_values`, `(batch, channels, height, width)`: the common test checks its last two
    # dimensions, then each convolution and hidden fully connected block gives its pre-activation and its output.
    @property
    def num_hidden_layers(self):
        return len(self.conv_channels) + len(self.classifier_hidden_sizes)

    @property
    def expected_num_hidden_layers(self):
        return 1 + 2 * self.num_hidden_layers

    @property
    def seq_length(self):
        return self.image_size

    @property
    def hidden_size(self):
        return self.image_size


class _ReferenceModelTest(ModelTesterMixin):
    # Images: no token embeddings to resize, no attention maps.
    test_resize_embeddings = False
    has_attentions = False

    def setUp(self):
        self.model_tester = self.model_tester_class(self)
        self.config_tester = ConfigTester(
            self,
            config_class=self.model_tester_class.config_class,
            has_text_modality=False,
            common_properties=["num_channels", "image_size"],
        )

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # The common tests tell base models from heads by looking the class name up in transformers' tables of its
        # own models (a base model has no loss to train; an image classifier gets `labels`). The reference models are
        # registered with the Auto classes, which does not list them there: list them for the duration of the class.
        config_class = cls.model_tester_class.config_class
        base_class, head_class = cls.all_model_classes
        for table, class_name in (
            (modeling_auto.MODEL_MAPPING_NAMES, base_class.__name__),
            (modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES, head_class.__name__),
        ):
            patcher = mock.patch.dict(table, {config_class.model_type: class_name})
            patcher.start()
            cls.addClassCleanup(patcher.stop)

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip(reason="Image models without token embeddings: `get_input_embeddings` returns None")
    def test_model_get_set_embeddings(self):
        pass

    def _prepare_config_and_inputs_for_retain_grad_hidden_states_attentions(self):
        # `hidden_states[0]` is the model's input itself (flattened for the MLP), documented as such and kept so that
        # feature-distillation indices stay put: it has a gradient to retain only if the input requires one.
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        inputs_dict["pixel_values"].requires_grad_()
        return config, inputs_dict


if _MODULES is not None:

    class MLPModelTest(_ReferenceModelTest, unittest.TestCase):
        model_tester_class = MLPModelTester
        all_model_classes = (MLPModel, MLPForImageClassification)

    class CNNModelTest(_ReferenceModelTest, unittest.TestCase):
        model_tester_class = CNNModelTester
        all_model_classes = (CNNModel, CNNForImageClassification)
else:

    def test_transformers_common_tests_are_available():
        pytest.skip(_SKIP_REASON)
