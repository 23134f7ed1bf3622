"""DistillationTrainer under DeepSpeed ZeRO-2, ZeRO-3 and FSDP2, on two CPU processes (gloo, through accelerate
launch), against one process with the same global batch.

Each launch (tests/sharded_worker.py) checks several things at once, since a launch costs 20-60 s here: the
student (and, under ZeRO-3 or with `teacher_sharding="sharded"`, the teacher) is really sharded, the teacher's
logits (live, and precomputed by every process together) equal an unsharded teacher's, `save_model` on every process
writes a whole student that reloads with `from_pretrained`, and that student equals the one-process run's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT
from datasets import Dataset

from hf_kd import DistillationTrainer, MLPForImageClassification
from hf_kd.models import MLPConfig
from hf_kd.placement import shards_teacher
from hf_kd.teacher.precompute import teacher_fingerprint

needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason='deepspeed is not installed (DS_BUILD_OPS=0 pip install -e ".[deepspeed]"; .ci/run installs it)',
)

sys.path.insert(0, str(REPO_ROOT / "tests"))
from sharded_worker import PROBE, training_args  # noqa: E402

pytestmark = pytest.mark.slow  # launches and whole-example runs

GLOBAL_BATCH = 16


def accelerate_config(engine: str) -> str:
    """accelerate's config for two CPU processes (gloo, float32): DeepSpeed ZeRO-2/3 (its CPU accelerator), or FSDP2
    (run with the worker's test-only shim: accelerate alone would fall back to DDP on a CPU)."""
    if engine == "fsdp2":
        # NO_WRAP: the root module is the one FSDP unit (a size-based policy would wrap the MLP's ModuleList, which
        # fully_shard refuses: it has no forward). FULL_STATE_DICT: the only type save_model writes.
        plugin = [
            "distributed_type: FSDP", "fsdp_config:", "  fsdp_version: 2", "  fsdp_auto_wrap_policy: NO_WRAP",
            "  fsdp_cpu_ram_efficient_loading: false", "  fsdp_offload_params: false",
            "  fsdp_reshard_after_forward: true", "  fsdp_state_dict_type: FULL_STATE_DICT",
            "  fsdp_sync_module_states: false", "use_cpu: false",
        ]  # fmt: skip
    else:
        zero_stage = int(engine[-1])
        plugin = [
            "distributed_type: DEEPSPEED", "deepspeed_config:", f"  zero_stage: {zero_stage}",
            "  offload_optimizer_device: none", "  offload_param_device: none",
            f"  zero3_init_flag: {'true' if zero_stage == 3 else 'false'}",
            "  zero3_save_16bit_model: true",  # save_model gathers the shards into one whole state dict
            "use_cpu: true",
        ]  # fmt: skip
    common = ["compute_environment: LOCAL_MACHINE", "mixed_precision: 'no'", "num_machines: 1", "num_processes: 2",
              "machine_rank: 0"]  # fmt: skip
    return "\n".join([*common, *plugin, ""])


def launch(config_file, *args, timeout: int = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


@pytest.fixture(scope="module")
def deepspeed_cpu_comm_op():
    """DeepSpeed's CPU backend compiles a shared-memory op with g++ on first use (cached in ~/.cache/torch_extensions;
    from 35 s to minutes on a busy 2-core machine): built once here, not by two processes inside a launch."""
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None and builder.is_compatible():
        builder.load()


@pytest.fixture(scope="module")
def run_inputs(tmp_path_factory):
    """A tiny teacher and student (MLPs on 8x8 images, hidden sizes 48 and 16), and 64 learnable examples."""
    root = tmp_path_factory.mktemp("sharded")
    torch.manual_seed(0)
    for name, hidden in (("teacher", [48]), ("student", [16])):
        config = MLPConfig(num_channels=1, image_size=8, hidden_sizes=hidden, num_labels=4)
        MLPForImageClassification(config).save_pretrained(root / "models" / name)
    pixels = torch.randn(64, 1, 8, 8)
    labels = pixels.flatten(1)[:, :4].argmax(-1)
    Dataset.from_dict({"pixel_values": pixels.numpy(), "labels": labels.tolist()}).save_to_disk(root / "data")
    return root


@pytest.fixture(scope="module")
def one_process_student(run_inputs):
    """The reference: one process, the same global batch, the same data order (the sampler is seeded)."""
    from datasets import load_from_disk

    torch.set_num_threads(1)
    trainer = DistillationTrainer(
        model=MLPForImageClassification.from_pretrained(run_inputs / "models" / "student"),
        teacher_model=MLPForImageClassification.from_pretrained(run_inputs / "models" / "teacher"),
        args=training_args(str(run_inputs / "one"), GLOBAL_BATCH),
        train_dataset=load_from_disk(run_inputs / "data").with_format("torch"),
    )
    trainer.train()
    return trainer.model.state_dict()


@pytest.mark.parametrize(
    ("engine", "teacher_sharding"),
    [
        pytest.param("zero2", "auto", marks=needs_deepspeed, id="zero2"),
        pytest.param("zero3", "auto", marks=needs_deepspeed, id="zero3"),
        pytest.param("fsdp2", "auto", id="fsdp2"),
        pytest.param("zero3", "whole", marks=needs_deepspeed, id="zero3-teacher_whole"),
        pytest.param("fsdp2", "sharded", id="fsdp2-teacher_sharded"),
    ],
)
def test_sharded_training_trains_like_one_process(
    engine, teacher_sharding, run_inputs, one_process_student, tmp_path, request
):
    if engine.startswith("zero"):
        request.getfixturevalue("deepspeed_cpu_comm_op")
    config_file = tmp_path / "accelerate.yaml"
    config_file.write_text(accelerate_config(engine))
    output_dir = tmp_path / "out"
    launch(
        config_file, str(REPO_ROOT / "tests" / "sharded_worker.py"), "--models", str(run_inputs / "models"),
        "--data", str(run_inputs / "data"), "--output_dir", str(output_dir),
        "--per_device_batch", str(GLOBAL_BATCH // 2), *(["--fsdp_on_cpu"] if engine == "fsdp2" else []),
        "--teacher_sharding", teacher_sharding,
    )  # fmt: skip
    ranks = [json.loads((output_dir / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    expected_type = "FSDP" if engine == "fsdp2" else "DEEPSPEED"
    assert all(r["distributed_type"] == f"DistributedType.{expected_type}" for r in ranks)

    # Sharded: under ZeRO-3 each process holds about half of every model's elements (the partitions are padded to
    # a multiple of the world size); under FSDP2 half of the student's (DTensor shards); under ZeRO-2 the weights
    # are whole and the optimizer's master weights halved. The teacher as teacher_sharding says ('auto': sharded
    # under ZeRO-3 only), measured after its forward (FSDP2 must reshard it: it never runs a backward); 'whole'
    # under ZeRO-3 gathers a teacher that zero.Init partitioned at load time, and a teacher given by name is
    # loaded whole.
    teacher_sharded = teacher_sharding == "sharded" or (teacher_sharding == "auto" and engine == "zero3")
    for r in ranks:
        student, teacher = r["student"], r["teacher"]
        assert (student["held"] <= student["full"] // 2 + 16) == (engine != "zero2"), student
        assert (teacher["held"] <= teacher["full"] // 2 + 16) == teacher_sharded, teacher
        assert (teacher["held"] == teacher["full"]) == (not teacher_sharded), teacher
        by_name = r["teacher_by_name"]
        assert (by_name["held"] == by_name["full"]) == (teacher_sharding == "whole" or engine != "zero3"), by_name
        if engine != "fsdp2":
            assert r["student_optimizer_elements"] <= student["full"] // 2 + 16

    # The teacher, sharded or whole, computes what the unsharded teacher computes, live and precomputed.
    teacher = MLPForImageClassification.from_pretrained(run_inputs / "models" / "teacher").eval()
    probe = torch.tensor(Dataset.load_from_disk(run_inputs / "data").with_format("numpy")[:PROBE]["pixel_values"])
    with torch.no_grad():
        expected = teacher(pixel_values=probe).logits
    for r in ranks:
        assert r["teacher_fingerprint"] == teacher_fingerprint(teacher)  # so the logits cache never goes stale
        torch.testing.assert_close(torch.tensor(r["teacher_live_logits"]), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.tensor(r["teacher_precomputed_logits"]), expected, rtol=1e-5, atol=1e-5)

    # save_model on every process wrote one whole student; it equals the one-process run's up to summation order.
    # Saved as its own class, loadable as remote code: not as torch's generated FSDP2 subclass, whose module's files
    # the save would copy beside the model.
    auto_map = json.loads((output_dir / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageClassification"] == "modeling_mlp.MLPForImageClassification"
    assert (output_dir / "modeling_mlp.py").is_file() and not list(output_dir.glob("_fsdp*.py"))
    saved = MLPForImageClassification.from_pretrained(output_dir)
    reference = one_process_student
    assert saved.state_dict().keys() == reference.keys()
    for name, value in saved.state_dict().items():
        assert value.shape == reference[name].shape, name
        torch.testing.assert_close(value, reference[name], rtol=1e-3, atol=1e-4, msg=name)


def test_teacher_sharding_is_validated(run_inputs, tmp_path):
    """An unknown choice is refused by the config; 'sharded' where nothing shards (one process, ZeRO-2) by the
    trainer, before training, naming the argument and what it needs; 'auto' shards under ZeRO-3 only."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType
    from datasets import load_from_disk

    with pytest.raises(ValueError, match="teacher_sharding must be one of"):
        training_args(str(tmp_path / "a"), 8, teacher_sharding="half")
    with pytest.raises(ValueError, match=r"teacher_sharding='sharded' needs DeepSpeed ZeRO-3 or FSDP.*this run is NO"):
        DistillationTrainer(
            model=MLPForImageClassification.from_pretrained(run_inputs / "models" / "student"),
            teacher_model=MLPForImageClassification.from_pretrained(run_inputs / "models" / "teacher"),
            args=training_args(str(tmp_path / "b"), 8, teacher_sharding="sharded"),
            train_dataset=load_from_disk(run_inputs / "data").with_format("torch"),
        )

    def deepspeed(stage):
        plugin = SimpleNamespace(deepspeed_config={"zero_optimization": {"stage": stage}})
        return SimpleNamespace(
            distributed_type=DistributedType.DEEPSPEED, state=SimpleNamespace(deepspeed_plugin=plugin)
        )

    with pytest.raises(ValueError, match="this run is DeepSpeed ZeRO-2"):
        shards_teacher("sharded", deepspeed(2))
    fsdp = SimpleNamespace(distributed_type=DistributedType.FSDP)
    assert [shards_teacher(s, deepspeed(3)) for s in ("auto", "whole", "sharded")] == [True, False, True]
    assert [shards_teacher(s, fsdp) for s in ("auto", "whole", "sharded")] == [False, False, True]
    assert not shards_teacher("auto", deepspeed(2))
