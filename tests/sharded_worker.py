"""One process of a sharded DistillationTrainer run, launched by tests/test_sharded.py with `accelerate launch`.

Trains the student saved in `<models>/student` from the teacher in `<models>/teacher` on `<data>` (a saved Dataset of
`pixel_values`, `labels`), its teacher logits precomputed by the trainer, then saves the student with `save_model`
on every process. Each process writes what the test checks to `<output_dir>/rank<k>.json`: how many of each
model's parameter elements it holds, the teacher's live logits on the first examples, and the precomputed ones.
`--teacher_sharding` is `DistillationConfig.teacher_sharding`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from datasets import load_from_disk

from hf_kd import DistillationConfig, DistillationTrainer, MLPForImageClassification
from hf_kd.runs.preparation import as_script
from hf_kd.teacher.ensemble import resolve_teacher
from hf_kd.teacher.precompute import teacher_fingerprint

PROBE = 8  # examples whose teacher logits are compared with an unsharded teacher's


def training_args(output_dir: str, per_device_batch: int, **changes) -> DistillationConfig:
    """The run's settings; the test's one-process reference uses the same ones with the global batch."""
    settings = dict(
        output_dir=output_dir, use_cpu=True, per_device_train_batch_size=per_device_batch, num_train_epochs=2,
        learning_rate=1e-2, seed=0, save_strategy="no", report_to="none", logging_steps=2,
        dataloader_pin_memory=False, temperature=2.0, alpha=0.5, precompute_teacher_logits=True,
        teacher_batch_size=32,
    )  # fmt: skip
    return DistillationConfig(**{**settings, **changes})


def held_elements(model: torch.nn.Module) -> dict[str, int]:
    """This process's parameter elements and the model's full count: a ZeRO-3 parameter holds its partition in
    `ds_tensor` and knows its full size as `ds_numel`; an FSDP2 DTensor holds its local shard; any other is whole."""

    def held(p):
        local = p.to_local() if hasattr(p, "to_local") else p
        return p.ds_tensor.numel() if hasattr(p, "ds_tensor") else local.numel()

    full = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    return {"held": sum(held(p) for p in model.parameters()), "full": full}


def optimizer_elements(trainer) -> int | None:
    """The fp32 master weights this process's ZeRO optimizer updates (ZeRO-1/2 shard those, not the weights)."""
    optimizer = trainer.model_wrapped.optimizer  # the engine's ZeRO optimizer (trainer.optimizer wraps it)
    partitions = getattr(optimizer, "single_partition_of_fp32_groups", None)  # ZeRO-1/2
    if partitions is None:
        partitions = getattr(optimizer, "fp32_partitioned_groups_flat", None)  # ZeRO-3
    return None if partitions is None else sum(p.numel() for p in partitions)


def fsdp_on_cpu_shim() -> dict:
    """TEST-ONLY, never in the library: accelerate turns on FSDP only for GPU-like process types, so on a CPU an FSDP
    launch silently trains with DDP. Declaring the gloo processes MULTI_GPU, with the CPU as their device, before the
    Trainer's accelerator is built lets accelerate wrap the student in FSDP for real. Returns the extra arguments."""
    from fsdp_cpu_launch import fsdp_on_cpu  # beside this file

    fsdp_on_cpu()
    return {"accelerator_config": {"use_configured_state": True}}


def local_elements(model: torch.nn.Module) -> int:
    """This process's parameter elements of an FSDP-wrapped model: FSDP2 DTensors hold their local shard;
    FSDP1's original parameters (use_orig_params) are views of this process's flat shard."""
    return sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--per_device_batch", type=int, default=8)
    parser.add_argument("--fsdp_on_cpu", action="store_true", help="the test-only shim (see fsdp_on_cpu_shim)")
    parser.add_argument("--teacher_sharding", default="auto")
    cli = parser.parse_args()
    torch.set_num_threads(1)

    changes = fsdp_on_cpu_shim() if cli.fsdp_on_cpu else {}
    changes["teacher_sharding"] = cli.teacher_sharding
    args = training_args(
        cli.output_dir, cli.per_device_batch, **changes
    )  # first: under ZeRO-3 the loads below are sharded
    student = MLPForImageClassification.from_pretrained(Path(cli.models) / "student")
    teacher = MLPForImageClassification.from_pretrained(Path(cli.models) / "teacher")
    dataset = load_from_disk(cli.data).with_format("torch")
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset)

    rank = trainer.args.process_index
    probe = dataset[:PROBE]["pixel_values"]
    with torch.no_grad():  # every process runs the forward: a sharded teacher gathers its layers from all of them
        live_logits = trainer.teacher_model(pixel_values=probe).logits
    report = {
        "world_size": trainer.args.world_size,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "teacher": held_elements(trainer.teacher_model),  # after a forward: a sharded teacher is resharded
        # a teacher given by name, loaded as teacher_sharding says (whole: never partitioned by zero.Init)
        "teacher_by_name": held_elements(resolve_teacher(str(Path(cli.models) / "teacher"), student, args)),
        "teacher_live_logits": live_logits.tolist(),
        "teacher_precomputed_logits": trainer.train_dataset[:PROBE]["teacher_logits"].tolist(),
        # the cache key of precomputed logits: a sharded teacher's weights are gathered to be hashed
        "teacher_fingerprint": teacher_fingerprint(trainer.teacher_model),
    }
    trainer.train()
    report["student"] = held_elements(trainer.model)
    if cli.fsdp_on_cpu:
        report["student"]["held"] = local_elements(trainer.model_wrapped)
        report["student_optimizer_elements"] = None
    else:
        report["student_optimizer_elements"] = optimizer_elements(trainer)
    trainer.save_model()  # on every process: ZeRO-3 gathers the shards for the main process to write
    (Path(cli.output_dir) / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    with as_script():  # the process group ended with both processes done (CI once saw rank 1 abort at exit)
        main()
