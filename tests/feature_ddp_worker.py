"""A feature-distillation run, launched by tests/test_distributed.py with `accelerate launch` on two gloo processes
(half the global batch each); `train` is also called in the test's own process, with the whole batch, as the
reference.

MLP teacher and student from fixed seeds, generated images, a Linear connector (student 100 -> teacher 400
features); after training, the main process writes the student and the connectors to `<output_dir>/end.safetensors`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from datasets import Dataset
from safetensors.torch import save_file

from hf_kd import DistillationConfig, DistillationTrainer
from hf_kd.models import model_from_preset
from hf_kd.runs.preparation import as_script

GLOBAL_BATCH, EXAMPLES = 16, 64


def train(output_dir: str, per_device_batch: int) -> tuple[dict, dict]:
    """Train the pair; returns the student's and the connectors' tensors before and after training (on every
    process)."""
    torch.set_num_threads(1)
    args = DistillationConfig(
        output_dir=output_dir, use_cpu=True, num_train_epochs=2, learning_rate=1e-2, seed=0, save_strategy="no",
        report_to="none", logging_steps=1, dataloader_pin_memory=False, disable_tqdm=True,
        per_device_train_batch_size=per_device_batch, feature_pairs=["hidden_states.2:hidden_states.2"],
        feature_loss="hint",
    )  # fmt: skip
    torch.manual_seed(0)
    teacher, student = model_from_preset("mnist-mlp-teacher"), model_from_preset("mnist-mlp-student")
    g = torch.Generator().manual_seed(1)
    data = Dataset.from_dict({
        "pixel_values": torch.randn(EXAMPLES, 1, 28, 28, generator=g).numpy(),
        "labels": torch.randint(0, 10, (EXAMPLES,), generator=g).numpy(),
    }).with_format("torch")  # fmt: skip
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data)
    start = snapshot(student, trainer)
    trainer.train()
    return start, snapshot(student, trainer)


def snapshot(student: torch.nn.Module, trainer: DistillationTrainer) -> dict:
    state = {f"student.{k}": v for k, v in student.state_dict().items()}
    state.update({f"connectors.{k}": v for k, v in trainer.feature_distillation.term.connectors.state_dict().items()})
    return {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    cli = parser.parse_args()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    _, state = train(cli.output_dir, GLOBAL_BATCH // world_size)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(cli.output_dir).mkdir(parents=True, exist_ok=True)
        save_file(state, Path(cli.output_dir) / "end.safetensors")


if __name__ == "__main__":
    with as_script():  # the process group ended with both processes done, not left to the interpreter's exit
        main()
