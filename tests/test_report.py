"""hf_kd.report.report: measuring a model, writing the report atomically, the plot; the output-dir refusal."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from datasets import Dataset

from hf_kd.data import InMemoryDataset
from hf_kd.models import model_from_preset
from hf_kd.report.measure import ModelResult, measure_model
from hf_kd.report.report import REPORT_JSON, REPORT_MD, SETTING_LABELS, DistillationReport
from hf_kd.runs.preparation import check_output_dir

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

    from hf_kd.report.metrics import Accuracy, compute_metrics_fn, load_metric, metric_value

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
    from hf_kd.report.measure import directory_size_mb

    model = tmp_path / "student"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"x" * 300_000)
    (model / "config.json").write_bytes(b"y" * 1_000)
    (model / "checkpoint-500").mkdir()
    (model / "checkpoint-500" / "optimizer.pt").write_bytes(b"z" * 900_000)
    assert directory_size_mb(model) == pytest.approx(0.301)
    with pytest.raises(ValueError, match="is not a directory"):
        directory_size_mb(model / "config.json")


# ---------------------------------------------------------------------------------------------------------------------
# Settings, file modes, the plot, latency, warnings, curves


def test_run_settings_is_the_one_settings_builder():
    from hf_kd import DistillationConfig
    from hf_kd.report.report import OPTIONAL_SETTINGS_KEYS, SETTINGS_KEYS, run_settings

    args = DistillationConfig(
        output_dir="unused", report_to="none", temperature=2.0, alpha=0.7, learning_rate=5e-4, seed=3,
        per_device_train_batch_size=16, num_train_epochs=2, teacher_dtype="bfloat16",
    )  # fmt: skip
    settings = run_settings(args, teacher_logits="precomputed", world_size=2)
    assert set(SETTINGS_KEYS) <= set(settings) <= set(SETTINGS_KEYS + OPTIONAL_SETTINGS_KEYS)
    assert (settings["temperature"], settings["alpha"], settings["teacher_logits"]) == (2.0, 0.7, "precomputed")
    assert (settings["num_train_epochs"], settings["seed"], settings["per_device_train_batch_size"]) == (2, 3, 16)
    assert settings["world_size"] == 2 and "max_steps" not in settings  # -1: no step limit
    assert settings["mixed_precision"] == "no" and settings["teacher_dtype"] == "bfloat16"
    # Without teacher_dtype, the teacher's own weights say it; max_steps is recorded when it limits the run.
    args = DistillationConfig(output_dir="unused", report_to="none", max_steps=7)
    settings = run_settings(args, teacher_logits="live", teacher=model_from_preset("mnist-mlp-teacher").half())
    assert settings["teacher_dtype"] == "float16" and settings["max_steps"] == 7
    DistillationReport(dataset="d", task="image-classification", teacher="t", settings=settings)  # valid as it is


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_get_the_usual_mode(tmp_path, umask):
    """mkstemp creates files 0600; the report's files must be as readable as any file the user writes."""
    pytest.importorskip("matplotlib")
    old = os.umask(umask)
    try:
        _report().save(tmp_path)
    finally:
        os.umask(old)
    for name in ("distillation_report.json", "distillation_report.md", "distillation_report.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_missing_matplotlib_is_said_once(tmp_path, monkeypatch, caplog):
    import logging
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    with caplog.at_level(logging.WARNING, logger="hf_kd.report.report"):
        path = _report().save(tmp_path)
    assert json.loads(path.read_text())["plot"] is None and not (tmp_path / "distillation_report.png").exists()
    said = [r.getMessage() for r in caplog.records if "matplotlib" in r.getMessage()]
    assert len(said) == 1 and "pip install matplotlib" in said[0] and '.[plot]' in said[0]


def test_latency_is_the_fastest_pass_median_with_its_spread(tmp_path):
    from hf_kd.report.measure import LATENCY_PASSES, latency_ms, latency_statistics

    # Call times (s) of passes that alternate between a slow and a fast machine.
    passes = [[0.004, 0.002, 0.006], [0.001, 0.003, 0.002]] * 3
    every_call = [t for calls in passes for t in calls]
    latency, spread = latency_statistics(passes)
    assert latency == pytest.approx(2.0)  # the fast passes' median, in ms; the slow ones' is 4.0
    assert spread == pytest.approx(1000 * (np.percentile(every_call, 75) - np.percentile(every_call, 25)))

    torch.manual_seed(0)
    model = model_from_preset("mnist-mlp-student")
    dataset = InMemoryDataset({"pixel_values": torch.randn(8, 1, 28, 28), "labels": torch.arange(8)})
    median, iqr = latency_ms(model, dataset, num_examples=8)
    assert median > 0 and iqr >= 0
    model.save_pretrained(tmp_path / "m")
    result, _ = measure_model("student_kd", model, dataset, lambda p, r: 0.5, tmp_path / "m", latency_examples=4)
    assert result.latency_ms > 0 and result.latency_ms_iqr is not None and result.latency_ms_iqr >= 0
    report = _report()
    report.models[2] = result
    markdown = report.to_markdown()
    assert f"over {LATENCY_PASSES} passes, each model's fastest pass's median" in markdown and "warm-up" in markdown
    assert f"{result.latency_ms:.3f} ± {result.latency_ms_iqr:.3f}" in markdown


def test_models_are_timed_in_turn_within_each_pass():
    """Each pass times every model on all its examples, one model after the other: a slow moment of the machine
    falls on one pass of each model, not on all the passes of one."""
    from hf_kd.report.measure import LATENCY_PASSES, LATENCY_WARMUP, batch1_examples, interleaved_latencies_ms

    models = {"first": model_from_preset("mnist-mlp-student"), "second": model_from_preset("mnist-mlp-teacher")}
    calls = []
    for name, model in models.items():
        model.register_forward_pre_hook(lambda module, args, name=name: calls.append(name))
    dataset = InMemoryDataset({"pixel_values": torch.randn(3, 1, 28, 28), "labels": torch.arange(3)})
    timed = [(model, batch1_examples(model, dataset, num_examples=2)) for model in models.values()]
    results = interleaved_latencies_ms(timed)
    timed_calls = calls[2 * LATENCY_WARMUP :]
    assert timed_calls == (["first"] * 2 + ["second"] * 2) * LATENCY_PASSES
    assert len(results) == 2 and all(latency > 0 for latency, _ in results)


def test_label_statistics():
    from hf_kd.report.measure import label_statistics

    stats = label_statistics(np.array([1, 1, 1, 0, 2, -100]))
    assert stats == {"num_test_examples": 5, "majority_class_accuracy": pytest.approx(0.6)}


def test_report_warns_about_a_teacher_no_better_than_the_majority_class(tmp_path, caplog):
    """The case from the first-hour issue: a 59.8% teacher on a task whose majority class is 57.8% (1,066 examples)."""
    import logging

    report = _report(num_test_examples=1066, majority_class_accuracy=0.578)
    report.models[0].accuracy = 0.598
    markdown = report.to_markdown()
    assert "Always answering the most frequent class scores 57.80%." in markdown
    assert "the teacher (59.80%) is no better than always answering the most frequent class (57.80%)" in markdown
    with caplog.at_level(logging.WARNING, logger="hf_kd.report.report"):
        report.save(tmp_path, plot=False)
    assert any("no better than always answering" in r.getMessage() for r in caplog.records)
    data = json.loads((tmp_path / REPORT_JSON).read_text())
    assert (data["num_test_examples"], data["majority_class_accuracy"]) == (1066, 0.578)
    assert DistillationReport.load(tmp_path).to_dict() == data
    # A teacher well above the majority class: no warning.
    assert not _report(num_test_examples=1066, majority_class_accuracy=0.578).notes()


def test_report_warns_when_distillation_loses_beyond_the_noise():
    from hf_kd.report.report import difference_standard_error

    # 10,000 examples: one standard error of a 97% vs 98% difference is sqrt((.97*.03 + .98*.02) / 1e4) = 0.22 points.
    assert difference_standard_error(0.97, 0.98, 10_000) == pytest.approx(0.002207, abs=1e-6)
    losing = _report(num_test_examples=10_000, majority_class_accuracy=0.11)
    losing.models[1].accuracy, losing.models[2].accuracy = 0.98, 0.97  # CE-only beats KD by 1 point
    (note,) = losing.notes()
    assert "distillation lost to the baseline by 1.00 points, more than the test set's noise (0.44 points" in note
    assert f"**{note}**" in losing.to_markdown()
    # The same 1-point loss on 100 examples is within the noise: no warning.
    small = _report(num_test_examples=100)
    small.models[1].accuracy, small.models[2].accuracy = 0.98, 0.97
    assert small.notes() == [] and "One binomial standard error of this difference is 2.21 points." in small.to_markdown()


def test_training_curves_and_teacher_recipe_in_the_report(tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    from hf_kd import DistillationConfig
    from hf_kd.report.report import teacher_recipe, training_curve

    log_history = [
        {"loss": 2.0, "loss_ce": 2.2, "loss_kd": 1.0, "learning_rate": 1e-3, "epoch": 0.5, "step": 10},
        {"eval_loss": 1.5, "eval_accuracy": 0.5, "epoch": 0.5, "step": 10},
        {"loss": 1.0, "loss_ce": 1.1, "loss_kd": 0.5, "learning_rate": 5e-4, "epoch": 1.0, "step": 20},
        {"train_runtime": 3.0, "train_loss": 1.5, "epoch": 1.0, "step": 20},
    ]
    curve = training_curve(log_history)
    assert curve == {"step": [10, 20], "loss": [2.0, 1.0], "loss_ce": [2.2, 1.1], "loss_kd": [1.0, 0.5]}
    args = DistillationConfig(output_dir="unused", report_to="none", num_train_epochs=3, learning_rate=2e-3)
    recipe = teacher_recipe(args, max_shift=1)
    assert recipe["num_train_epochs"] == 3 and recipe["learning_rate"] == 2e-3 and recipe["max_shift"] == 1
    curves = {"teacher": {"step": [10, 20], "loss": [1.0, 0.5]}, "student_kd": curve}
    report = _report(teacher_recipe=recipe, training_curves=curves)
    path = report.save(tmp_path)
    data = json.loads(path.read_text())
    assert data["training_curves"] == curves and data["teacher_recipe"] == recipe
    assert "The teacher was trained in this run: epochs: 3, learning rate: 0.002" in report.to_markdown()
    assert "random translation (max pixels): 1" in report.to_markdown()
    two_panels = tmp_path / "two"
    _report().save(two_panels)
    width = Image.open(tmp_path / "distillation_report.png").size[0]
    assert width > 1.4 * Image.open(two_panels / "distillation_report.png").size[0]  # the third panel: the curves


def test_plot_ticks_are_plain_numbers():
    from hf_kd.report.plot import _plain_number

    assert [_plain_number(v) for v in (0.06, 0.2, 5.0, 80_000.0, 200_000.0, 1_500_000.0)] == [
        "0.06", "0.2", "5", "80k", "200k", "1.5M",
    ]  # fmt: skip


def test_the_report_says_steps_when_max_steps_set_the_schedule():
    """`max_steps` wins over the epochs in the Trainer; the report's settings line says what ran."""
    by_epochs = _report().to_markdown()
    assert f"; {SETTINGS['num_train_epochs']} epochs, lr" in by_epochs
    report = _report()
    report.settings["max_steps"] = 4690
    by_steps = report.to_markdown()
    assert "; 4,690 steps, lr" in by_steps and " epochs, lr" not in by_steps
    # The card's settings table says the same: the steps, not the epochs that did not run.
    from hf_kd.report.modelcard import setting_rows

    assert SETTING_LABELS["num_train_epochs"] in dict(setting_rows(SETTINGS))
    rows = dict(setting_rows(report.settings))
    assert rows[SETTING_LABELS["max_steps"]] == "4690" and SETTING_LABELS["num_train_epochs"] not in rows
