"""Two processes on the CPU (gloo, through `accelerate launch`), against one with the same global batch."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from conftest import accelerate_launch, assert_trained
from datasets import DatasetDict
from safetensors.torch import load_file
from test_examples_image import LOCAL_ACCURACY, make_image_dataset

pytestmark = pytest.mark.slow  # launches and whole-example runs

GLOBAL_BATCH = 16


def launch(num_processes: int, data_dir, output_dir, tmp_path) -> subprocess.CompletedProcess:
    return accelerate_launch(
        num_processes, "examples/distill_mnist.py",
        "--use_cpu",
        "--dataset_name", str(data_dir),
        "--output_dir", str(output_dir),
        "--per_device_train_batch_size", str(GLOBAL_BATCH // num_processes),
        "--num_train_epochs", "2",
        "--teacher_max_shift", "0",  # random shifts would differ between the two layouts
        "--metric_name_or_path", LOCAL_ACCURACY,
        "--latency_examples", "5",
        "--no_plot",
        "--logging_steps", "2",  # training curves in the report: each model's loss must fall
        env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip


def test_two_cpu_processes_train_like_one_with_the_same_global_batch(tmp_path):
    data_dir = tmp_path / "data"
    DatasetDict(
        {"train": make_image_dataset(192, 28, "L", seed=0), "test": make_image_dataset(48, 28, "L", seed=1)}
    ).save_to_disk(data_dir)
    single, double = tmp_path / "one", tmp_path / "two"
    launch(1, data_dir, single, tmp_path)
    result = launch(2, data_dir, double, tmp_path)

    reports = {name: json.loads((path / "distillation_report.json").read_text()) for name, path in
               (("one", single), ("two", double))}
    assert reports["one"]["settings"]["world_size"] == 1
    for report in reports.values():  # both runs trained every model: equal weights alone could be two no-ops
        assert_trained(report, ["teacher", "student_ce", "student_kd"])
    assert reports["two"]["settings"]["world_size"] == 2
    # Written once, by the main process: one printed report, one complete file set, no temp leftovers.
    assert result.stdout.count("# Distillation report") == 1
    files = sorted(p.name for p in double.iterdir())
    assert files == ["distillation_report.json", "distillation_report.md", "student_ce", "student_kd", "teacher"]
    assert (double / "distillation_report.md").read_text().count("| Student (KD) |") == 1
    for model in ("teacher", "student_ce", "student_kd"):
        assert sorted(p.name for p in (double / model).iterdir()) == sorted(p.name for p in (single / model).iterdir())

    # DDP averages the two halves' gradients: the same updates as one process on the whole batch, up to float
    # summation order (seen: at most 1.5e-5 after 24 Adam steps, on weights of magnitude ~0.3; another data order or
    # an unaveraged gradient moves them by ~1e-2). Teacher, baseline and distilled student all match.
    for model in ("teacher", "student_ce", "student_kd"):
        one = load_file(single / model / "model.safetensors")
        two = load_file(double / model / "model.safetensors")
        assert one.keys() == two.keys()
        for name in one:
            torch.testing.assert_close(two[name], one[name], rtol=1e-3, atol=1e-4, msg=f"{model}.{name}")
    accuracy = {r: {m["name"]: m["accuracy"] for m in reports[r]["models"]} for r in reports}
    assert accuracy["one"] == accuracy["two"]


def test_two_processes_train_the_same_connectors_as_one(tmp_path):
    """The feature connectors are prepared like the student: DDP averages their gradients across the processes, so
    two processes with half the batch each end where one process with the whole batch does (float summation order
    aside), the student as well."""
    from feature_ddp_worker import GLOBAL_BATCH, train  # beside this file

    accelerate_launch(2, "tests/feature_ddp_worker.py", "--output_dir", str(tmp_path / "two"), timeout=300)
    two = load_file(tmp_path / "two" / "end.safetensors")
    one = train(str(tmp_path / "one"), GLOBAL_BATCH)
    assert one.keys() == two.keys() and any(key.startswith("connectors.") for key in one)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-3, atol=1e-4, msg=key)
