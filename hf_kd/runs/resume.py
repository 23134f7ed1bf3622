"""Resuming a run after a crash: each training stage of a run (`output_dir/<stage>`) is finished, resumable from its
last complete checkpoint, or started afresh, as transformers' own examples resume with `get_last_checkpoint`.

A stage is finished when its directory holds [`STAGE_MARKER`], written atomically after its model was saved: a rerun
loads that model instead of training it again. Otherwise it resumes from its newest checkpoint that the Trainer
finished writing (`trainer_state.json`, written last, can be read); a checkpoint cut short by the crash is removed
with a warning.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from transformers import Trainer, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME, TRAINING_ARGS_NAME
from transformers.trainer_utils import sort_checkpoints
from transformers.utils import logging

from ..placement import saved_as_own_class
from ..utils import atomic_write

logger = logging.get_logger(__name__)

# Starts with "_": `Trainer.push_to_hub` does not upload such files, and a model's measured size leaves them out.
STAGE_MARKER = "_hf_kd_stage_finished.json"


def check_resume_argument(config: TrainingArguments, stage_dirs: list[str | os.PathLike]) -> None:
    """`--resume_from_checkpoint`, when given, must name an existing checkpoint of one of the run's stages."""
    requested = config.resume_from_checkpoint
    if not requested:
        return
    path = Path(requested)
    if not path.is_dir():
        raise ValueError(
            f"--resume_from_checkpoint {requested!r} does not exist. Name a checkpoint-N directory of one of this "
            f"run's stages ({', '.join(str(d) for d in stage_dirs)}), or leave it out: a rerun into the same "
            "--output_dir resumes every stage from its last complete checkpoint by itself."
        )
    if path.resolve().parent not in {Path(d).resolve() for d in stage_dirs}:
        raise ValueError(
            f"--resume_from_checkpoint {requested!r} is not a checkpoint of one of this run's stages: expected a "
            f"checkpoint-N directory inside {', '.join(str(d) for d in stage_dirs)}."
        )


def last_complete_checkpoint(args: TrainingArguments) -> str | None:
    """The checkpoint a stage resumes from: `args.resume_from_checkpoint` when it lies in this stage's directory,
    else the newest `checkpoint-N` there holding `trainer_state.json`. Newer incomplete ones are removed."""
    stage_dir = Path(args.output_dir)
    requested = args.resume_from_checkpoint
    if requested and Path(requested).resolve().parent == stage_dir.resolve():
        return str(requested)
    if not stage_dir.is_dir():
        return None
    for checkpoint in reversed(sort_checkpoints(str(stage_dir))):
        if _is_complete(checkpoint):
            return checkpoint
        logger.warning(
            f"Skipping the incomplete checkpoint {checkpoint} (no readable {TRAINER_STATE_NAME}: the previous run "
            "stopped while writing it); it is removed."
        )
        if args.should_save:
            shutil.rmtree(checkpoint, ignore_errors=True)
    return None


def _is_complete(checkpoint: str) -> bool:
    """The Trainer writes `trainer_state.json` last, and not atomically: a crash can leave it missing or cut short."""
    try:
        json.loads(Path(checkpoint, TRAINER_STATE_NAME).read_text())
    except (OSError, ValueError):
        return False
    return True


def finished_stage(stage_dir: str | os.PathLike) -> dict | None:
    """What a finished stage recorded (`train_time_s`, `log_history`), or None when it has not finished."""
    marker = Path(stage_dir) / STAGE_MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None


def train_or_resume(trainer: Trainer) -> tuple[float, list[dict]]:
    """Train `trainer`'s model for its stage (`trainer.args.output_dir`) and return its training time and log: a
    finished stage's model is loaded instead, an interrupted one resumes from its last complete checkpoint. The
    model is then saved there with the marker that says the stage is finished."""
    stage_dir = trainer.args.output_dir
    done = finished_stage(stage_dir)
    if done is not None:
        logger.warning(f"{stage_dir} holds a finished stage ({STAGE_MARKER}): its model is loaded, not trained again.")
        trainer._load_from_checkpoint(stage_dir)  # the Trainer's own loader: safetensors, sharded or adapter weights
        return done["train_time_s"], done["log_history"]
    checkpoint = last_complete_checkpoint(trainer.args)
    if checkpoint is not None:
        logger.warning(f"Resuming {stage_dir} from {checkpoint}.")
    output = trainer.train(resume_from_checkpoint=checkpoint)
    train_time_s, log_history = float(output.metrics["train_runtime"]), list(trainer.state.log_history)
    # Every process takes part (under ZeRO-3 / FSDP the weights are gathered); the main one writes.
    with saved_as_own_class(trainer.model):  # under FSDP2, not as torch's generated class (hf_kd.runs.sharding)
        trainer.save_model(stage_dir)
    if trainer.args.should_save:
        # training_args.bin is the run's settings, not the model that ships (and would count in its measured size).
        Path(stage_dir, TRAINING_ARGS_NAME).unlink(missing_ok=True)
        payload = json.dumps({"train_time_s": train_time_s, "log_history": log_history}, indent=1)
        atomic_write(Path(stage_dir) / STAGE_MARKER, payload)
    trainer.accelerator.wait_for_everyone()
    return train_time_s, log_history
