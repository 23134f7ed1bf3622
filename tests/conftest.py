"""Shared test fixtures: a tiny real classifier family and a synthetic task with a known teacher."""

from __future__ import annotations

import os
from pathlib import Path

# Tests never reach the Hub: a stray download fails fast instead of hanging on an offline machine. Set before the HF
# libraries are imported, since they read these once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest
import torch
from datasets import Dataset
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput

REPO_ROOT = Path(__file__).resolve().parents[1]

def pytest_configure(config):
    # `slow`: subprocess launches, whole-example runs and real-data checks (seconds to minutes each). The quick
    # subset for iterating is `python -m pytest -m "not slow" tests` (README, "Tests").
    config.addinivalue_line("markers", "slow: a launch, a whole example run or a real-data check (deselect: -m 'not slow')")

SHARED_DIR = REPO_ROOT.parent / "shared"


def shared_path(*parts: str) -> Path | None:
    """A path under ../shared, or None when that real data is not on this machine."""
    path = SHARED_DIR.joinpath(*parts)
    return path if path.exists() else None


class TinyConfig(PretrainedConfig):
    model_type = "hf_kd_test_tiny"

    def __init__(self, input_size: int = 16, hidden_size: int = 0, dropout: float = 0.0, num_labels: int = 4, **kwargs):
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.dropout = dropout
        super().__init__(num_labels=num_labels, **kwargs)


class TinyForSequenceClassification(PreTrainedModel):
    """A real (if tiny) transformers model: linear, or one hidden ReLU layer, over a `features` vector."""

    config_class = TinyConfig
    main_input_name = "features"

    def __init__(self, config: TinyConfig):
        super().__init__(config)
        layers: list[nn.Module] = []
        width = config.input_size
        if config.hidden_size:
            layers += [nn.Linear(width, config.hidden_size), nn.ReLU()]
            width = config.hidden_size
        layers += [nn.Dropout(config.dropout), nn.Linear(width, config.num_labels)]
        self.net = nn.Sequential(*layers)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.kaiming_uniform_(module.weight, a=5**0.5)
            nn.init.zeros_(module.bias)

    def forward(self, features, labels=None, return_dict=None):
        logits = self.net(features)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


AutoConfig.register(TinyConfig.model_type, TinyConfig, exist_ok=True)
AutoModelForSequenceClassification.register(TinyConfig, TinyForSequenceClassification, exist_ok=True)


def make_teacher(seed: int = 0, dropout: float = 0.0, num_labels: int = 4, input_size: int = 16):
    """The known function: a fixed random linear map, scaled so its classes are confident but not one-hot."""
    torch.manual_seed(seed)
    teacher = TinyForSequenceClassification(TinyConfig(input_size=input_size, dropout=dropout, num_labels=num_labels))
    with torch.no_grad():
        teacher.net[-1].weight.mul_(3.0)
    return teacher


def make_student(seed: int = 1, **config_kwargs):
    torch.manual_seed(seed)
    return TinyForSequenceClassification(TinyConfig(hidden_size=32, **config_kwargs))


def make_dataset(teacher: nn.Module, n: int, seed: int) -> Dataset:
    """Random inputs labelled by the teacher's argmax (so labels and teacher agree)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, teacher.config.input_size, generator=g)
    with torch.no_grad():
        y = teacher(x).logits.argmax(-1)
    return Dataset.from_dict({"features": x.numpy(), "labels": y.numpy()}).with_format("torch")


@pytest.fixture
def tiny_task():
    teacher = make_teacher()
    return teacher, make_dataset(teacher, 512, seed=10), make_dataset(teacher, 256, seed=11)
