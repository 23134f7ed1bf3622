"""Resuming a run after a crash: each training stage of a run (`output_dir/<stage>`) is finished, resumable from its
last complete checkpoint, or started afresh, as transformers' own examples resume with `get_last_checkpoint`.

A stage is finished when its directory holds [`STAGE_MARKER`], written atomically after its model was saved: a rerun
loads that model instead of training it again. Otherwise it resumes from its newest checkpoint that the Trainer
finished writing (`trainer_state.json`, written last, can be read); a checkpoint cut short by the crash is removed
with a warning.

A stage is reused (finished, or from a checkpoint) only when it was trained with the settings the rerun would train
it with ([`hf_kd.runs.stage_settings`], recorded in `STAGE_SETTINGS` before training and in the marker): otherwise
the rerun is refused with [`StageSettingsMismatch`], naming each differing setting and both values. A stage stopped
by SIGTERM / SIGINT saves a checkpoint first ([`hf_kd.runs.preemption`]); one that runs out of disk says which file
failed ([`hf_kd.utils.DiskFullError`]).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from transformers import Trainer, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME, TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, sort_checkpoints
from transformers.utils import SAFE_WEIGHTS_NAME, logging

from ..placement import saved_as_own_class
from ..utils import DiskFullError, atomic_write, disk_full_reason, is_disk_full
from .preemption import PreemptionCallback, RunPreempted, preemption_requested
from .stage_settings import settings_differences, stage_settings

logger = logging.get_logger(__name__)

# Starts with "_": `Trainer.push_to_hub` does not upload such files, and a model's measured size leaves them out.
STAGE_MARKER = "_hf_kd_stage_finished.json"
STAGE_SETTINGS = "_hf_kd_stage_settings.json"


class StageSettingsMismatch(ValueError):
    """A rerun would reuse a stage (finished, or a checkpoint) trained with other settings."""


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


def recorded_settings(stage_dir: str | os.PathLike) -> dict | None:
    """The settings a stage was trained with: the finished marker's, else the record written when it started."""
    done = finished_stage(stage_dir)
    if done is not None and "settings" in done:
        return done["settings"]
    path = Path(stage_dir) / STAGE_SETTINGS
    return json.loads(path.read_text()) if path.is_file() else None


def check_reusable(stage_dir: str | os.PathLike, settings: dict, reused: str) -> None:
    """Refuse to reuse `reused` (a finished stage, a checkpoint) of `stage_dir` unless it was trained with
    `settings`. A stage from before settings were recorded is reused with a warning."""
    recorded = recorded_settings(stage_dir)
    if recorded is None:
        logger.warning(f"{stage_dir} records no settings (an older hf_kd): {reused} is reused unchecked.")
        return
    differences = settings_differences(recorded, settings)
    if differences:
        raise StageSettingsMismatch(
            f"{stage_dir} holds {reused} trained with other settings than this command's; reusing it would mix two "
            "runs. Differing:\n  - " + "\n  - ".join(differences) + "\nRerun with the recorded settings to resume, "
            "pass --overwrite_output_dir to start afresh (the previous contents are moved aside), or choose "
            "another --output_dir."
        )


def _newest_files(folder: Path) -> list[str]:
    """The files of `folder` written last: a file `torch.save` could not finish is among them (file times are only as
    fine as the kernel's clock tick, so files written within the same few milliseconds tie)."""
    files = [(path.stat().st_mtime_ns, path.name) for path in folder.iterdir() if path.is_file()]
    newest = max((mtime for mtime, _ in files), default=0)
    return sorted(name for mtime, name in files if mtime == newest)


def _raise_if_disk_full(error: BaseException, what: str, folder: Path) -> None:
    """The Trainer's writes (safetensors, torch.save) do not name their file: say what was being saved, where, and
    the files written last there."""
    if not is_disk_full(error) or isinstance(error, DiskFullError):
        return
    if type(error).__name__ == "SafetensorError":  # safetensors removes the file it could not finish
        newest = [SAFE_WEIGHTS_NAME]
    else:  # torch.save leaves what it wrote: the file cut short is among the newest
        newest = _newest_files(folder) if folder.is_dir() else []
    being_written = f" (the file being written: {' or '.join(newest)})" if newest else ""
    raise DiskFullError(
        f"Saving {what} to {folder} failed{being_written}: {disk_full_reason(error)}. Every file written before it is "
        f"intact: a checkpoint cut short has no {TRAINER_STATE_NAME} and is skipped, a model is only taken as "
        f"finished with its {STAGE_MARKER}. Free some space (or raise the limit) and run the same command again: it "
        "resumes.",
        folder / newest[-1] if len(newest) == 1 else folder,
    ) from error


def train_or_resume(trainer: Trainer) -> tuple[float, list[dict]]:
    """Train `trainer`'s model for its stage (`trainer.args.output_dir`) and return its training time and log: a
    finished stage's model is loaded instead, an interrupted one resumes from its last complete checkpoint, when
    either was trained with the same settings ([`check_reusable`]). The model is then saved there with the marker
    that says the stage is finished. On SIGTERM / SIGINT the stage checkpoints and raises [`RunPreempted`]."""
    stage_dir = trainer.args.output_dir
    settings = stage_settings(trainer)
    done = finished_stage(stage_dir)
    if done is not None:
        check_reusable(stage_dir, settings, f"a finished stage ({STAGE_MARKER})")
        logger.warning(f"{stage_dir} holds a finished stage ({STAGE_MARKER}): its model is loaded, not trained again.")
        trainer._load_from_checkpoint(stage_dir)  # the Trainer's own loader: safetensors, sharded or adapter weights
        return done["train_time_s"], done["log_history"]
    checkpoint = last_complete_checkpoint(trainer.args)
    if checkpoint is not None:
        check_reusable(stage_dir, settings, f"the checkpoint {checkpoint}")
        logger.warning(f"Resuming {stage_dir} from {checkpoint}.")
    if trainer.args.should_save:
        atomic_write(Path(stage_dir) / STAGE_SETTINGS, json.dumps(settings, indent=1))
    preemption = PreemptionCallback()
    trainer.add_callback(preemption)
    try:
        train_time_s, log_history = _train_and_save(trainer, checkpoint, settings, preemption)
    finally:
        trainer.remove_callback(preemption)
    if preemption_requested():  # the signal came after the last step: the stage is finished, the run stops here
        raise RunPreempted(preemption_requested())
    return train_time_s, log_history


def _train_and_save(
    trainer: Trainer, checkpoint: str | None, settings: dict, preemption: PreemptionCallback
) -> tuple[float, list[dict]]:
    """Train (from `checkpoint`), then save the model and the marker; raise [`RunPreempted`] instead when a signal
    stopped the training (the Trainer saved its checkpoint at that step)."""
    stage_dir = trainer.args.output_dir
    try:
        output = trainer.train(resume_from_checkpoint=checkpoint)
    except Exception as error:  # the Trainer writes checkpoints only
        checkpoint_dir = Path(stage_dir) / f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
        _raise_if_disk_full(error, "the checkpoint", checkpoint_dir)
        raise
    if preemption.stopped_at_step is not None:
        saved = Path(stage_dir) / f"{PREFIX_CHECKPOINT_DIR}-{preemption.stopped_at_step}"
        trainer.accelerator.wait_for_everyone()
        raise RunPreempted(preemption_requested(), stage_dir, str(saved))
    train_time_s, log_history = float(output.metrics["train_runtime"]), list(trainer.state.log_history)
    # Every process takes part (under ZeRO-3 / FSDP the weights are gathered); the main one writes.
    try:
        with saved_as_own_class(trainer.model):  # under FSDP2, not as torch's generated class (hf_kd.runs.sharding)
            trainer.save_model(stage_dir)
    except Exception as error:
        _raise_if_disk_full(error, "the model", Path(stage_dir))
        raise
    if trainer.args.should_save:
        # training_args.bin is the run's settings, not the model that ships (and would count in its measured size).
        Path(stage_dir, TRAINING_ARGS_NAME).unlink(missing_ok=True)
        payload = {"train_time_s": train_time_s, "log_history": log_history, "settings": settings}
        atomic_write(Path(stage_dir) / STAGE_MARKER, json.dumps(payload, indent=1))
    trainer.accelerator.wait_for_everyone()
    return train_time_s, log_history
