"""examples/distill_mnist.py under DeepSpeed ZeRO-3 on two CPU processes (examples/accelerate_configs/
deepspeed_zero3.yaml as shipped, plus --use_cpu), against one process with the same global batch: every process takes
part in saving, the main process measures the models reloaded whole, and the report matches."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT
from datasets import DatasetDict
from safetensors.torch import load_file
from test_examples_image import LOCAL_ACCURACY, check_report, make_image_dataset

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason='deepspeed is not installed (DS_BUILD_OPS=0 pip install -e ".[deepspeed]"; .ci/run installs it)',
)

GLOBAL_BATCH = 16
MODELS = ["teacher", "student_ce", "student_kd"]


def run_mnist(launcher: list[str], data_dir, output_dir, per_device_batch: int) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *launcher,
        str(REPO_ROOT / "examples" / "distill_mnist.py"), "--use_cpu",
        "--dataset_name", str(data_dir), "--output_dir", str(output_dir),
        "--per_device_train_batch_size", str(per_device_batch), "--num_train_epochs", "1",
        "--teacher_max_shift", "0",  # random shifts would differ between the two layouts
        "--metric_name_or_path", LOCAL_ACCURACY, "--latency_examples", "5", "--no_plot",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_DATASETS_CACHE": str(output_dir.parent / "cache")}  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def test_distill_mnist_under_zero3_reports_like_one_process(tmp_path):
    data_dir = tmp_path / "data"
    DatasetDict(
        {"train": make_image_dataset(256, 28, "L", seed=0), "test": make_image_dataset(64, 28, "L", seed=1)}
    ).save_to_disk(data_dir)
    single, zero3 = tmp_path / "one", tmp_path / "zero3"
    run_mnist(["--num_processes", "1", "--mixed_precision", "no"], data_dir, single, GLOBAL_BATCH)
    config = REPO_ROOT / "examples" / "accelerate_configs" / "deepspeed_zero3.yaml"
    result = run_mnist(["--config_file", str(config)], data_dir, zero3, GLOBAL_BATCH // 2)

    reports = {path.name: check_report(path, MODELS) for path in (single, zero3)}  # each model reloads whole
    assert reports["zero3"]["settings"]["world_size"] == 2
    assert result.stdout.count("# Distillation report") == 1  # measured and written by the main process alone
    # The saved models are whole (not the empty ZeRO-3 partitions) and equal the one-process run's up to float
    # summation order: teacher, baseline and distilled student all trained sharded.
    for model in MODELS:
        one = load_file(single / model / "model.safetensors")
        sharded = load_file(zero3 / model / "model.safetensors")
        assert one.keys() == sharded.keys()
        for name in one:
            assert sharded[name].shape == one[name].shape, f"{model}.{name}"
            torch.testing.assert_close(sharded[name], one[name], rtol=1e-3, atol=1e-4, msg=f"{model}.{name}")
    accuracy = {run: {m["name"]: m["accuracy"] for m in reports[run]["models"]} for run in reports}
    for model in MODELS:
        assert abs(accuracy["zero3"][model] - accuracy["one"][model]) <= 0.001, accuracy
