"""Shared test fixtures: a tiny real classifier family and a synthetic task with a known teacher."""

from __future__ import annotations

import os
import subprocess
import sys
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


def accelerate_launch(num_processes: int, script: str, *args: str, env: dict | None = None, timeout: int = 400):
    """Run `script` (relative to the repository) with `accelerate launch` on 1 or 2 CPU processes, one thread each.
    `--multi_gpu` is accelerate's data-parallel launcher (torchrun); with `--use_cpu` (or `use_cpu=True` in the
    script) the processes join a gloo group on a machine without GPUs. (`accelerate launch --cpu --num_processes 2`
    would start a single process.)"""
    launcher = ["--multi_gpu", "--num_processes", "2"] if num_processes == 2 else ["--num_processes", "1"]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO_ROOT / script), *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def assert_trained(report: dict, names: list[str]) -> None:
    """Each named model of a run's report trained: its logged training loss fell from its first log to its last (the
    run must log at least twice, e.g. `--logging_steps 2`)."""
    curves = report.get("training_curves") or {}
    for name in names:
        losses = curves.get(name, {}).get("loss", [])
        assert len(losses) >= 2, f"{name}: {len(losses)} logged training losses (log more often to see it train)"
        assert losses[-1] < losses[0], f"{name}: the training loss did not fall ({losses[0]} -> {losses[-1]})"


def tiny_bert(cls=None, *, vocab_size: int, num_layers: int = 1, seed: int = 0, num_labels: int = 2,
              hidden_size: int = 32, max_position_embeddings: int = 64, **config_kwargs):  # fmt: skip
    """A small random BERT (2 heads, feed-forward 2x wide) built under `seed`: the text tests' real encoder. `cls`:
    the head class (default `BertForSequenceClassification`); `config_kwargs` go to `BertConfig`."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=2,
        intermediate_size=2 * hidden_size, max_position_embeddings=max_position_embeddings, num_labels=num_labels,
        **config_kwargs,
    )  # fmt: skip
    return (cls or BertForSequenceClassification)(config)
