"""examples/distill_mnist.py on two CPU processes under DeepSpeed ZeRO-3 (examples/accelerate_configs/
deepspeed_zero3.yaml as shipped, plus --use_cpu) and FSDP2 (through the test-only shim), against one process with the
same global batch: every process takes part in saving, the main process measures the models reloaded whole, and the
report matches."""

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

pytestmark = pytest.mark.slow  # launches and whole-example runs

needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason='deepspeed is not installed (DS_BUILD_OPS=0 pip install -e ".[deepspeed]"; .ci/run installs it)',
)

GLOBAL_BATCH = 16
MODELS = ["teacher", "student_ce", "student_kd"]


def run_mnist(launcher: list[str], data_dir, output_dir, per_device_batch: int, *script_args: str):
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *launcher,
        str(REPO_ROOT / "examples" / "distill_mnist.py"), "--use_cpu",
        "--dataset_name", str(data_dir), "--output_dir", str(output_dir),
        "--per_device_train_batch_size", str(per_device_batch), "--num_train_epochs", "1",
        "--teacher_max_shift", "0",  # random shifts would differ between the two layouts
        "--metric_name_or_path", LOCAL_ACCURACY, "--latency_examples", "5", "--no_plot", *script_args,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_DATASETS_CACHE": str(output_dir.parent / "cache")}  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


FSDP2_ON_CPU = """compute_environment: LOCAL_MACHINE
distributed_type: FSDP
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: NO_WRAP
  fsdp_cpu_ram_efficient_loading: false
  fsdp_offload_params: false
  fsdp_reshard_after_forward: true
  fsdp_state_dict_type: FULL_STATE_DICT
  fsdp_sync_module_states: false
mixed_precision: 'no'
num_machines: 1
num_processes: 2
machine_rank: 0
"""


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    """The generated data, and the example run on one process with the whole global batch: the reference."""
    root = tmp_path_factory.mktemp("mnist_sharded")
    DatasetDict(
        {"train": make_image_dataset(256, 28, "L", seed=0), "test": make_image_dataset(64, 28, "L", seed=1)}
    ).save_to_disk(root / "data")
    run_mnist(["--num_processes", "1", "--mixed_precision", "no"], root / "data", root / "one", GLOBAL_BATCH)
    return root


@pytest.mark.parametrize(
    "engine", [pytest.param("zero3", marks=needs_deepspeed), "fsdp2"]
)
def test_distill_mnist_sharded_reports_like_one_process(engine, one_process_run, tmp_path):
    single, sharded_dir = one_process_run / "one", tmp_path / engine
    if engine == "zero3":
        config = REPO_ROOT / "examples" / "accelerate_configs" / "deepspeed_zero3.yaml"
        launcher, script_args = ["--config_file", str(config)], []
    else:  # FSDP2 needs the test-only shim on a CPU (tests/fsdp_cpu_launch.py), and the state it configures
        config = tmp_path / "fsdp2.yaml"
        config.write_text(FSDP2_ON_CPU)
        launcher = ["--config_file", str(config), str(REPO_ROOT / "tests" / "fsdp_cpu_launch.py")]
        script_args = ["--accelerator_config", '{"use_configured_state": true}']
    result = run_mnist(launcher, one_process_run / "data", sharded_dir, GLOBAL_BATCH // 2, *script_args)

    reports = {"one": check_report(single, MODELS), engine: check_report(sharded_dir, MODELS)}  # each reloads whole
    assert reports[engine]["settings"]["world_size"] == 2
    assert result.stdout.count("# Distillation report") == 1  # measured and written by the main process alone
    # The saved models are whole (not empty ZeRO-3 partitions or FSDP shards) and equal the one-process run's up to
    # float summation order: teacher, baseline and distilled student all trained sharded.
    for model in MODELS:
        assert not list((sharded_dir / model).glob("_fsdp*.py")), model  # saved as its class, not FSDP2's
        one = load_file(single / model / "model.safetensors")
        sharded = load_file(sharded_dir / model / "model.safetensors")
        assert one.keys() == sharded.keys()
        for name in one:
            assert sharded[name].shape == one[name].shape, f"{model}.{name}"
            torch.testing.assert_close(sharded[name], one[name], rtol=1e-3, atol=1e-4, msg=f"{model}.{name}")
    accuracy = {run: {m["name"]: m["accuracy"] for m in reports[run]["models"]} for run in reports}
    for model in MODELS:
        assert abs(accuracy[engine][model] - accuracy["one"][model]) <= 0.001, accuracy
