"""Issue 14, item 4: a run killed with `kill -9` mid-training resumes where it stopped when rerun into the same
--output_dir (the finished teacher loaded, the student from its last complete checkpoint), and ends with the student
an uninterrupted run trains."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from datasets import DatasetDict
from safetensors.torch import load_file
from test_examples_image import LOCAL_ACCURACY, make_image_dataset

pytestmark = pytest.mark.slow  # launches and whole-example runs

# Runs examples/distill_mnist.py's main, each DistillationTrainer step slowed by $STEP_SLEEP seconds so that the
# test can kill it mid-training. The process is real: it is killed with SIGKILL, no cleanup runs.
DRIVER = """
import os, sys, time
sys.path.insert(0, {examples!r})
from hf_kd.training.trainer import DistillationTrainer
step, pause = DistillationTrainer.training_step, float(os.environ.get("STEP_SLEEP", "0"))
DistillationTrainer.training_step = lambda self, *a, **k: (time.sleep(pause), step(self, *a, **k))[1]
from distill_mnist import main
main(sys.argv[1:])
"""


def start(output_dir: Path, data_dir: Path, pause: float = 0.0) -> subprocess.Popen:
    args = [
        "--dataset_name", str(data_dir), "--output_dir", str(output_dir), "--teacher_num_train_epochs", "1",
        "--num_train_epochs", "2", "--per_device_train_batch_size", "8", "--save_strategy", "steps",
        "--save_steps", "4", "--logging_steps", "4", "--skip_baseline", "--no_plot", "--latency_examples", "2",
        "--metric_name_or_path", LOCAL_ACCURACY, "--disable_tqdm", "true",
    ]  # fmt: skip
    code = DRIVER.format(examples=str(REPO_ROOT / "examples"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "STEP_SLEEP": str(pause)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, f"{out[-3000:]}\n{err[-5000:]}"
    return out + err


def complete_checkpoints(stage_dir: Path) -> list[int]:
    """The steps of the checkpoints whose trainer_state.json (written last) can be read."""
    steps = []
    for path in stage_dir.glob("checkpoint-*"):
        try:
            json.loads((path / "trainer_state.json").read_text())
            steps.append(int(path.name.split("-")[1]))
        except (OSError, ValueError):
            pass
    return sorted(steps)


def test_killed_run_resumes_each_stage_and_ends_as_an_uninterrupted_one(tmp_path):
    data_dir = tmp_path / "data"
    DatasetDict({"train": make_image_dataset(128, 28, "L", seed=0), "test": make_image_dataset(32, 28, "L", seed=1)}
                ).save_to_disk(data_dir)  # fmt: skip
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    uninterrupted = start(reference, data_dir)  # runs beside the one to be killed
    victim = start(crashed, data_dir, pause=0.25)
    deadline = time.time() + 120
    while len(complete_checkpoints(crashed / "student_kd")) < 2:  # 32 steps in all: stop it after step 8
        if victim.poll() is not None or time.time() > deadline:
            victim.kill()
            raise AssertionError(f"the run to kill ended or stalled:\n{victim.communicate()[1][-5000:]}")
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate()
    finish(uninterrupted)

    student_dir = crashed / "student_kd"
    last = complete_checkpoints(student_dir)[-1]
    assert last < 32 and not (student_dir / "model.safetensors").exists()
    # A checkpoint the crash cut short: no trainer_state.json (the Trainer writes it last).
    half_written = student_dir / f"checkpoint-{last + 4}"
    half_written.mkdir(exist_ok=True)
    (half_written / "config.json").write_text("{}")
    (half_written / "trainer_state.json").unlink(missing_ok=True)
    teacher_marker = next((crashed / "teacher").glob("_hf_kd_stage_finished.json"))
    teacher_written = teacher_marker.stat().st_mtime_ns

    log = finish(start(crashed, data_dir))
    assert "holds a finished stage" in log and teacher_marker.stat().st_mtime_ns == teacher_written  # not retrained
    assert f"Skipping the incomplete checkpoint {half_written}" in log  # and it was written again, whole
    assert f"Resuming {student_dir} from {student_dir / f'checkpoint-{last}'}" in log
    resumed = load_file(student_dir / "model.safetensors")
    expected = load_file(reference / "student_kd" / "model.safetensors")
    assert set(resumed) == set(expected)
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], rtol=1e-4, atol=1e-5)
    assert (crashed / "distillation_report.json").is_file()
