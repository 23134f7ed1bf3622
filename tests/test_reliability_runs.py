"""Issue 25 ("Reliability, round 2"): one run per output directory, resume only what matches, graceful preemption and
a full disk, each on real processes where the fault is a process's (a second run, kill -9, SIGTERM, a file-size
limit). The bad command-line inputs of item 4 are in tests/test_bad_inputs.py's table."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from datasets import Dataset, DatasetDict, load_from_disk
from safetensors.torch import load_file
from test_bad_inputs import _save_bert
from test_examples_image import LOCAL_ACCURACY, load_example, make_image_dataset

from hf_kd.runs.lock import HOLDER_FILE, LOCK_FILE, OutputDirInUseError, RunLock
from hf_kd.runs.preemption import PREEMPTED_EXIT_CODE
from hf_kd.runs.recipes import build_image_model
from hf_kd.runs.resume import StageSettingsMismatch

# Runs examples/distill_mnist.py as its `__main__` does (user errors as messages, exit statuses), each training step
# slowed by $STEP_SLEEP seconds so that a test can act mid-stage, under a file-size limit of $FSIZE bytes if set
# (SIGXFSZ ignored, so that an oversized write raises EFBIG instead of killing the process).
DRIVER = textwrap.dedent("""
    import os, resource, signal, sys, time
    if os.environ.get("FSIZE"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = int(os.environ["FSIZE"])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sys.path.insert(0, {examples!r})
    from hf_kd.training.trainer import DistillationTrainer
    step, pause = DistillationTrainer.training_step, float(os.environ.get("STEP_SLEEP", "0"))
    DistillationTrainer.training_step = lambda self, *a, **k: (time.sleep(pause), step(self, *a, **k))[1]
    from distill_mnist import main
    from hf_kd.runs.preparation import as_script
    with as_script():
        main(sys.argv[1:])
""")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("reliability") / "data"
    DatasetDict({"train": make_image_dataset(128, 28, "L", seed=0), "test": make_image_dataset(32, 28, "L", seed=1)}
                ).save_to_disk(folder)  # fmt: skip
    return folder


def run_args(output_dir: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        "--dataset_name", str(data_dir), "--output_dir", str(output_dir), "--teacher_num_train_epochs", "1",
        "--num_train_epochs", "2", "--per_device_train_batch_size", "8", "--skip_baseline", "--no_plot",
        "--latency_examples", "2", "--metric_name_or_path", LOCAL_ACCURACY, "--disable_tqdm", "true", *extra,
    ]  # fmt: skip


def start(output_dir: Path, data_dir: Path, *extra: str, pause: float = 0.0, fsize: int | None = None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "STEP_SLEEP": str(pause),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}  # fmt: skip
    if fsize:
        env["FSIZE"] = str(fsize)
    code = DRIVER.format(examples=str(REPO_ROOT / "examples"))
    return subprocess.Popen(
        [sys.executable, "-c", code, *run_args(output_dir, data_dir, *extra)], cwd=REPO_ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(process: subprocess.Popen, status: int = 0) -> str:
    out, err = process.communicate(timeout=300)
    assert process.returncode == status, f"status {process.returncode}\n{out[-3000:]}\n{err[-5000:]}"
    return out + err


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            raise AssertionError(f"the run ended or stalled before {what}:\n{process.communicate()[1][-5000:]}")
        time.sleep(0.05)


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert set(first) == set(second)
    for name in first:
        assert torch.equal(first[name], second[name]), name  # bit-exact


# --- item 1: one run per output directory ------------------------------------------------------------------------------


HOLD = "import sys, time; from hf_kd.runs.lock import RunLock; held = RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)"


def test_a_killed_holders_lock_does_not_block(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(OutputDirInUseError, match=rf"in use by another run: process {holder.pid} on host '.+', started"):
        RunLock(out).acquire()
    os.kill(holder.pid, signal.SIGKILL)  # no cleanup runs: its lock and holder files stay behind
    holder.wait()
    assert (out / LOCK_FILE).exists() and json.loads((out / HOLDER_FILE).read_text())["pid"] == holder.pid
    with RunLock(out):  # the OS released the dead process's lock
        assert json.loads((out / HOLDER_FILE).read_text())["pid"] == os.getpid()
    assert os.listdir(out) == []  # released: the lock and holder files go with it


@pytest.mark.slow
def test_a_second_run_into_a_running_runs_directory_is_refused(tmp_path, data_dir):
    out = tmp_path / "run"
    first = start(out, data_dir, pause=0.75)  # its student's 32 steps take 24 s or more
    wait_for((out / "student_kd" / "_hf_kd_stage_settings.json").is_file, first, "the student's training")
    second = start(out, data_dir, "--seed", "7")
    log = finish(second, status=1)
    # Refused while the first run held the directory (the holder it names), not after waiting for it to end.
    assert f"is in use by another run: process {first.pid} on host" in log and "Traceback" not in log
    finish(first)
    report = json.loads((out / "distillation_report.json").read_text())  # the first run's results, whole
    assert [model["name"] for model in report["models"]] == ["teacher", "student_kd"]
    assert report["settings"]["seed"] == 42
    for stage in ("teacher", "student_kd"):
        assert json.loads((out / stage / "_hf_kd_stage_finished.json").read_text())["settings"]["seed"] == 42
    assert not (out / LOCK_FILE).exists() and not (out / HOLDER_FILE).exists()  # released at the end


# --- item 2: resume only what was trained with the same settings -------------------------------------------------------


def run_in_process(out: Path, data_dir: Path, *extra: str):
    return load_example("distill_mnist.py").main(
        run_args(out, data_dir, "--num_train_epochs", "1", "--report_to", "none", *extra)
    )


def unfinish(out: Path) -> None:
    """The run as a crash after its stages left it: finished stages, no report."""
    for path in out.glob("distillation_report.*"):
        path.unlink()


@pytest.mark.slow
def test_a_rerun_with_other_settings_is_refused_naming_them(tmp_path, data_dir, caplog):
    out = tmp_path / "run"
    run_in_process(out, data_dir, "--temperature", "4")
    reference = tmp_path / "reference"
    shutil.copytree(out / "student_kd", reference)
    unfinish(out)
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*")}

    with pytest.raises(StageSettingsMismatch, match=r"teacher holds a finished stage .*\n  - --seed: 42 \(recorded\) "
                                                    r"!= 7 \(now\)\n"):  # fmt: skip
        run_in_process(out, data_dir, "--temperature", "4", "--seed", "7")
    with pytest.raises(StageSettingsMismatch) as refused:
        run_in_process(out, data_dir, "--temperature", "2", "--alpha", "0.9")
    message = str(refused.value)
    assert "student_kd holds a finished stage" in message
    assert "  - --alpha: 0.5 (recorded) != 0.9 (now)\n  - --temperature: 4.0 (recorded) != 2.0 (now)\n" in message
    assert "--overwrite_output_dir to start afresh" in message
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == before  # nothing touched

    caplog.clear()
    run_in_process(out, data_dir, "--temperature", "4")  # unchanged: both stages reused as they are
    assert caplog.text.count("holds a finished stage") == 2
    assert_same_weights(out / "student_kd", reference)
    assert (out / "distillation_report.json").is_file()


def save_teacher(folder: Path, data_dir: Path, seed: int) -> Path:
    classes = load_from_disk(str(data_dir))["train"].features["label"].names
    build_image_model("mnist-mlp-student", classes, seed).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_a_checkpoint_of_another_teacher_is_refused_and_the_same_resumes(tmp_path, data_dir):
    teacher_a, teacher_b = save_teacher(tmp_path / "a", data_dir, 0), save_teacher(tmp_path / "b", data_dir, 1)
    out = tmp_path / "run"
    run_in_process(out, data_dir, "--teacher_model_name_or_path", str(teacher_a), "--save_strategy", "steps",
                   "--save_steps", "8")  # fmt: skip
    reference = tmp_path / "reference"
    shutil.copytree(out / "student_kd", reference)
    unfinish(out)
    for name in ("_hf_kd_stage_finished.json", "model.safetensors"):  # the stage as a crash leaves it: checkpoints
        (out / "student_kd" / name).unlink()

    with pytest.raises(StageSettingsMismatch, match=r"holds the checkpoint .*checkpoint-16 trained with other "
                                                    r"settings.*\n  - the teacher's weights \(fingerprint\): '\w+' "
                                                    r"\(recorded\) != '\w+' \(now\)\n"):  # fmt: skip
        run_in_process(out, data_dir, "--teacher_model_name_or_path", str(teacher_b))
    # The same teacher saved elsewhere is the same teacher: resumed (from its last checkpoint, the last step).
    shutil.copytree(teacher_a, tmp_path / "a_moved")
    run_in_process(out, data_dir, "--teacher_model_name_or_path", str(tmp_path / "a_moved"))
    assert_same_weights(out / "student_kd", reference)


# --- item 3: SIGTERM saves a checkpoint at the next step boundary ------------------------------------------------------


@pytest.mark.slow
def test_sigterm_mid_stage_checkpoints_and_the_rerun_ends_as_an_uninterrupted_run(tmp_path, data_dir):
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    uninterrupted = start(reference, data_dir, "--save_strategy", "no")
    victim = start(stopped, data_dir, "--save_strategy", "no", pause=0.2)  # 32 student steps: ~6 s
    settings = stopped / "student_kd" / "_hf_kd_stage_settings.json"
    wait_for(settings.is_file, victim, "the student's stage")  # written as the stage starts training
    time.sleep(1.5)
    os.kill(victim.pid, signal.SIGTERM)
    log = finish(victim, status=PREEMPTED_EXIT_CODE)
    finish(uninterrupted)

    # With --save_strategy no, the only checkpoint is the one the signal asked for: complete, mid-stage.
    (checkpoint,) = (stopped / "student_kd").glob("checkpoint-*")
    step = int(checkpoint.name.split("-")[1])
    assert 0 < step < 32 and json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == step
    assert (checkpoint / "optimizer.pt").is_file() and (checkpoint / "rng_state.pth").is_file()
    assert not (stopped / "student_kd" / "model.safetensors").exists()
    assert f"SIGTERM received: the stage {stopped / 'student_kd'} saved a complete checkpoint, {checkpoint}" in log
    assert "To resume, run the same command again" in log and "Traceback" not in log

    log = finish(start(stopped, data_dir, "--save_strategy", "no"))
    assert f"Resuming {stopped / 'student_kd'} from {checkpoint}" in log
    assert_same_weights(stopped / "student_kd", reference / "student_kd")
    assert_same_weights(stopped / "teacher", reference / "teacher")


# --- item 5: a full disk ---------------------------------------------------------------------------------------------


ATOMIC_UNDER_LIMIT = textwrap.dedent("""
    import resource, signal, sys
    from hf_kd.utils import atomic_write
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
    try:
        atomic_write(sys.argv[1], b"x" * 5000)
    except OSError as error:
        print(error)
""")


def test_a_script_ends_its_process_group_when_main_returns():
    """`as_script` (every example's `__main__`) ends the process group itself once `main` returns, instead of leaving
    gloo's threads to the interpreter's exit (CI once saw a finished process abort there); an error leaves it alone."""
    script = textwrap.dedent("""
        import torch.distributed as dist
        from hf_kd.runs.preparation import as_script
        dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
        try:
            with as_script():
                raise RuntimeError("main failed")
        except RuntimeError:
            print("after an error:", dist.is_initialized())
        with as_script():
            print("inside:", dist.is_initialized())
        print("after main returned:", dist.is_initialized())
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines == ["after an error: True", "inside: True", "after main returned: False"], result.stdout


def test_atomic_write_over_the_file_size_limit_keeps_the_old_file_and_names_the_new_one(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("the previous report")
    result = subprocess.run([sys.executable, "-c", ATOMIC_UNDER_LIMIT, str(path)], check=False, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"Writing {path} failed: the file exceeds the file-size limit (EFBIG" in result.stdout
    assert "The previous report.json, if any, is intact" in result.stdout
    assert path.read_text() == "the previous report" and os.listdir(tmp_path) == ["report.json"]  # no temp file left


# A small teacher (every file < 1 MB) and a larger "student" (its weights 1.4 MB): with a 1 MB limit the student's
# save fails (safetensors); with 500 kB the teacher's first checkpoint does (torch.save of its 636 kB optimizer state).
MODELS = ("--teacher", "mnist-mlp-student", "--student", "mnist-mlp-teacher", "--num_train_epochs", "1")
FAULTS = {  # limit, arguments, what fails, where, the file, and the reason given (torch.save says no more)
    "model": (1_000_000, [], "the model", "student_kd", "model.safetensors", "the file exceeds the file-size limit (EFBIG"),
    "checkpoint": (500_000, ["--save_strategy", "steps", "--save_steps", "8"], "the checkpoint", "teacher/checkpoint-8",
                   "optimizer.pt", "a write came back short: no space left, or over a file-size limit or quota"),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_run_over_the_file_size_limit_fails_cleanly_and_its_rerun_completes(tmp_path, data_dir, fault):
    limit, extra, what, folder, file, reason = FAULTS[fault]
    out = tmp_path / "run"
    log = finish(start(out, data_dir, *MODELS, *extra, fsize=limit), status=1)
    assert f"error: Saving {what} to {out / folder} failed (the file being written: {file}): {reason}" in log, log[-3000:]
    assert "Every file written before it is intact" in log and "Traceback" not in log
    finished = sorted(path.parent.name for path in out.glob("*/_hf_kd_stage_finished.json"))
    assert finished == (["teacher"] if fault == "model" else [])
    written = {path: path.stat().st_mtime_ns for path in out.glob("*/_hf_kd_stage_finished.json")}

    log = finish(start(out, data_dir, *MODELS, *extra))  # room again: the rerun completes
    if fault == "model":  # the finished teacher was kept, not trained again
        assert "teacher holds a finished stage" in log
        assert {path: path.stat().st_mtime_ns for path in written} == written
    else:  # the checkpoint cut short was skipped, and written again whole
        assert f"Skipping the incomplete checkpoint {out / folder}" in log
        assert json.loads((out / folder / "trainer_state.json").read_text())["global_step"] == 8
    assert (out / "student_kd" / "_hf_kd_stage_finished.json").is_file()
    assert (out / "distillation_report.json").is_file()


@pytest.mark.slow
def test_a_text_run_with_precomputed_logits_resumes_and_refuses_another_temperature(tmp_path, caplog):
    """The student's data carries logits the rerun computes again from the teacher loaded back: the data compares by
    its own columns, the teacher by its weights."""
    texts = Dataset.from_dict({"text": ["good movie", "bad movie", "great", "awful"] * 8, "label": ["pos", "neg"] * 16})
    DatasetDict({"train": texts, "test": texts}).save_to_disk(tmp_path / "data")
    out = tmp_path / "run"
    argv = [
        "--dataset_name", str(tmp_path / "data"), "--output_dir", str(out), "--metric_name_or_path", LOCAL_ACCURACY,
        "--teacher_model_name_or_path", str(_save_bert(tmp_path / "bert")), "--num_train_epochs", "1",
        "--teacher_num_train_epochs", "1", "--latency_examples", "2", "--no_plot", "--report_to", "none",
        "--f1_metric_name_or_path", "none", "--max_length", "16", "--skip_baseline", "--disable_tqdm", "true",
    ]  # fmt: skip
    example = load_example("distill_text_classification.py")
    example.main(argv)  # the teacher's head is new: fine-tuned here (stage teacher), then distilled
    shutil.copytree(out / "student_kd", tmp_path / "reference")
    unfinish(out)
    with pytest.raises(StageSettingsMismatch, match=r"student_kd holds a finished stage .*\n  - --temperature: 2.0 "
                                                    r"\(recorded\) != 3.0 \(now\)\nRerun"):  # fmt: skip
        example.main([*argv, "--temperature", "3"])
    caplog.clear()
    example.main(argv)
    assert caplog.text.count("holds a finished stage") == 2
    assert_same_weights(out / "student_kd", tmp_path / "reference")
