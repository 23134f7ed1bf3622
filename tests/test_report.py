"""hf_kd.report: measuring a model, writing the report atomically, the plot; the output-dir refusal."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from datasets import Dataset

from hf_kd.data import InMemoryDataset
from hf_kd.experiment import check_output_dir
from hf_kd.models import model_from_preset
from hf_kd.report import REPORT_JSON, REPORT_MD, DistillationReport, ModelResult, measure_model

SETTINGS = {
    "temperature": 4.0,
    "alpha": 0.5,
    "loss_type": "kl",
    "teacher_logits": "live",
    "num_train_epochs": 1.0,
    "learning_rate": 1e-3,
    "seed": 0,
    "per_device_train_batch_size": 8,
}


def _result(name, parameters, accuracy, latency):
    return ModelResult(name, name.title(), name, parameters, 1.0, 2.0, 0.1, latency, accuracy, 0.9)


def _report(**kwargs):
    models = [
        _result("teacher", 355_110, 0.99, 0.2),
        _result("student_ce", 79_510, 0.97, 0.05),
        _result("student_kd", 79_510, 0.98, 0.05),
    ]
    return DistillationReport(
        dataset="mnist",
        task="image-classification",
        teacher="trained here",
        settings=dict(SETTINGS),
        models=models,
        **kwargs,
    )


def test_measure_model(tmp_path):
    torch.manual_seed(0)
    model = model_from_preset("mnist-mlp-student")
    model.save_pretrained(tmp_path / "student")
    pixels = torch.randn(20, 1, 28, 28)
    dataset = InMemoryDataset({"pixel_values": pixels, "labels": torch.arange(20) % 10})
    with torch.no_grad():
        expected = model(pixels).logits.argmax(-1).numpy()

    def accuracy(predictions, references):
        return float(np.mean(predictions == references))

    teacher_predictions = expected.copy()
    teacher_predictions[:5] = (teacher_predictions[:5] + 1) % 10
    result, predictions = measure_model(
        "student_kd",
        model,
        dataset,
        accuracy,
        tmp_path / "student",
        output_dir=tmp_path,
        train_time_s=1.234,
        teacher_predictions=teacher_predictions,
        batch_size=7,
        latency_examples=3,
    )
    np.testing.assert_array_equal(predictions, expected)
    assert result.label == "Student (KD)" and result.path == "student"
    assert result.parameters == 79_510
    assert result.size_mb == pytest.approx(
        sum(f.stat().st_size for f in (tmp_path / "student").iterdir()) / 1e6, abs=1e-4
    )
    assert result.accuracy == pytest.approx(np.mean(expected == np.arange(20) % 10))
    assert result.agreement_with_teacher == pytest.approx(0.75)
    assert result.latency_ms > 0 and result.eval_time_s > 0 and result.train_time_s == 1.23

    # A datasets.Dataset works as well as the in-memory one.
    arrow = Dataset.from_dict({"pixel_values": pixels.numpy(), "labels": (torch.arange(20) % 10).numpy()})
    result_arrow, _ = measure_model("teacher", model, arrow, accuracy, tmp_path / "student", latency_examples=2)
    assert result_arrow.accuracy == result.accuracy and result_arrow.agreement_with_teacher == 1.0


def test_report_files_schema_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    report = _report()
    path = report.save(tmp_path)
    data = json.loads(path.read_text())
    assert set(data) == {"dataset", "task", "teacher", "metric", "settings", "models", "plot"}
    assert data["settings"] == SETTINGS and data["plot"] == "distillation_report.png"
    assert [m["name"] for m in data["models"]] == ["teacher", "student_ce", "student_kd"]
    png = (tmp_path / "distillation_report.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    markdown = (tmp_path / REPORT_MD).read_text()
    assert "| Student_Kd | 79,510 |" in markdown and "98.00%" in markdown
    assert "4.5x fewer parameters" in markdown and "gained 1.00 points" in markdown
    assert DistillationReport.load(tmp_path).to_dict() == data
    assert sorted(os.listdir(tmp_path)) == [
        "distillation_report.json",
        "distillation_report.md",
        "distillation_report.png",
    ]


def test_report_without_plot(tmp_path):
    report = _report()
    report.save(tmp_path, plot=False)
    assert json.loads((tmp_path / REPORT_JSON).read_text())["plot"] is None
    assert not (tmp_path / "distillation_report.png").exists()


def test_report_write_is_atomic(tmp_path):
    _report().save(tmp_path, plot=False)
    before = (tmp_path / REPORT_JSON).read_text()
    broken = _report()
    broken.settings["seed"] = object()  # not JSON-serialisable: fails halfway through saving
    with pytest.raises(TypeError):
        broken.save(tmp_path, plot=False)
    # The old report is intact and no temporary file is left behind.
    assert (tmp_path / REPORT_JSON).read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["distillation_report.json", "distillation_report.md"]


def test_report_validates_fields():
    with pytest.raises(ValueError, match="task must be"):
        DistillationReport(dataset="d", task="regression", teacher="t", settings=dict(SETTINGS))
    with pytest.raises(ValueError, match=r"settings is missing \['seed'\]"):
        DistillationReport(
            dataset="d",
            task="image-classification",
            teacher="t",
            settings={k: v for k, v in SETTINGS.items() if k != "seed"},
        )


def test_output_dir_refusal(tmp_path):
    check_output_dir(tmp_path, overwrite=False)  # empty: fine
    (tmp_path / "teacher").mkdir()
    check_output_dir(tmp_path, overwrite=False)  # an unfinished run (no report): fine
    _report().save(tmp_path, plot=False)
    with pytest.raises(FileExistsError, match=rf"{tmp_path}.*--overwrite_output_dir"):
        check_output_dir(tmp_path, overwrite=False)
    check_output_dir(tmp_path, overwrite=True)
    assert not (tmp_path / REPORT_JSON).exists() and not (tmp_path / REPORT_MD).exists()


def test_load_metric_local_module_and_offline_fallback():
    from conftest import REPO_ROOT

    from hf_kd.metrics import Accuracy, compute_metrics_fn, load_metric, metric_value

    local = load_metric(str(REPO_ROOT / "tests" / "metrics" / "accuracy"))
    assert metric_value(local, [0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    # The tests run offline: the Hub's "accuracy" cannot be fetched, hf_kd's built-in copy stands in (quickly).
    builtin = load_metric("accuracy")
    assert isinstance(builtin, Accuracy) and metric_value(builtin, [1, 1], [1, 0]) == 0.5
    with pytest.raises(FileNotFoundError, match="--metric_name_or_path"):
        load_metric("no_such_metric_anywhere")

    from transformers.trainer_utils import EvalPrediction

    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert compute_metrics_fn(local)(EvalPrediction(logits, np.array([1, 0, 0]))) == {"accuracy": 2 / 3}


def test_model_size_leaves_out_trainer_checkpoints(tmp_path):
    from hf_kd.report import directory_size_mb

    model = tmp_path / "student"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"x" * 300_000)
    (model / "config.json").write_bytes(b"y" * 1_000)
    (model / "checkpoint-500").mkdir()
    (model / "checkpoint-500" / "optimizer.pt").write_bytes(b"z" * 900_000)
    assert directory_size_mb(model) == pytest.approx(0.301)
    with pytest.raises(ValueError, match="is not a directory"):
        directory_size_mb(model / "config.json")


@pytest.mark.parametrize(
    "env, refused",
    [
        ({"ACCELERATE_USE_FSDP": "true"}, "FSDP"),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "DeepSpeed ZeRO-3"),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, None),
        ({}, None),
    ],
)
def test_examples_refuse_sharded_training(tmp_path, monkeypatch, env, refused):
    """The examples measure and save on the main process alone: sharded setups get an error, not a hang."""
    from hf_kd import DistillationConfig
    from hf_kd.experiment import check_unsharded

    for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE"):
        monkeypatch.delenv(name, raising=False)
    # Built first: with the DeepSpeed variables set, TrainingArguments wants the deepspeed package installed.
    config = DistillationConfig(output_dir=str(tmp_path), report_to="none")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if refused is None:
        check_unsharded(config)
    else:
        with pytest.raises(ValueError, match=f"do not support {refused} yet.*multi_gpu.yaml"):
            check_unsharded(config)
