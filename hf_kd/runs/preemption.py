"""Graceful preemption: SIGTERM (a cluster scheduler or a spot instance ending the job, with a grace period) or SIGINT
(Ctrl-C) stops a run at the next step boundary, after a complete checkpoint of the training stage.

- [`PreemptionHandlers`] (installed for a run by [`hf_kd.runs.preparation.prepare_run`]) turns the first signal into a
  request. While a stage trains, [`PreemptionCallback`] (added to every stage's Trainer by
  [`hf_kd.runs.resume.train_or_resume`]) answers it at the end of the current optimizer step: the Trainer saves a
  checkpoint (`control.should_save`: model, optimizer, scheduler, RNG states, then `trainer_state.json`) and stops
  (`control.should_training_stop`); `train_or_resume` then raises [`RunPreempted`] instead of finishing the stage.
  Outside training (loading data, computing teacher logits, measuring) there is no step to finish: [`RunPreempted`]
  is raised at once (every file a run writes outside the Trainer is written atomically).
- A second signal ends the process at once, as it would without these handlers.
- The examples exit with status [`PREEMPTED_EXIT_CODE`] = 75 (`EX_TEMPFAIL` of BSD's sysexits.h: a temporary failure,
  retry later), distinct from 1 (an error) and 143 (128 + SIGTERM: killed without saving), and print how to resume:
  rerun the same command, which resumes the stage from the checkpoint just written.

With several processes (DDP), the request is shared at every step boundary (an all-reduce of one flag), so every
process stops after the same step even when the signal reached only some of them.
"""

from __future__ import annotations

import os
import signal
import threading

import torch
from transformers import TrainerCallback
from transformers.utils import logging

logger = logging.get_logger(__name__)

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunPreempted(Exception):
    """The run stopped on a signal; rerunning the same command resumes it. `checkpoint` is the checkpoint a training
    stage saved before stopping, or None when the signal came outside training."""

    def __init__(self, signal_name: str, stage_dir: str | None = None, checkpoint: str | None = None):
        self.signal_name, self.stage_dir, self.checkpoint = signal_name, stage_dir, checkpoint
        where = (
            f"the stage {stage_dir} saved a complete checkpoint, {checkpoint}, and stopped"
            if checkpoint
            else "it stopped outside training (nothing was being trained; every finished stage is kept)"
        )
        super().__init__(
            f"{signal_name} received: {where}. To resume, run the same command again (same arguments, same "
            f"--output_dir): finished stages are loaded and the interrupted one resumes from its last checkpoint. "
            f"Exit status {PREEMPTED_EXIT_CODE}."
        )


class _Request:
    """The signal received, if any, and whether a stage is training (so that the signal waits for its step)."""

    signal_name: str | None = None
    training: bool = False


REQUEST = _Request()


def preemption_requested() -> str | None:
    """The name of the signal that asked the run to stop (`"SIGTERM"`, `"SIGINT"`), or None."""
    return REQUEST.signal_name


def _handle(signum, frame):
    name = signal.Signals(signum).name
    if REQUEST.signal_name is not None:  # a second signal: stop now, as without these handlers
        signal.signal(signum, signal.SIG_DFL)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        os.kill(os.getpid(), signum)
        return
    REQUEST.signal_name = name
    if not REQUEST.training:
        raise RunPreempted(name)
    logger.warning(f"{name} received: saving a checkpoint at the end of this step, then stopping (again: stop now).")


class PreemptionHandlers:
    """SIGTERM / SIGINT handlers for the length of a run (`with PreemptionHandlers(): ...`); the previous handlers
    come back at the end. Only the main thread can install signal handlers: elsewhere this does nothing."""

    def __init__(self):
        self._previous: dict[int, object] = {}

    def __enter__(self) -> PreemptionHandlers:
        REQUEST.signal_name, REQUEST.training = None, False
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, _handle) for signum in SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def _shared(requested: bool) -> bool:
    """Whether any process of a distributed run was asked to stop."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return requested
    if torch.distributed.get_world_size() == 1:
        return requested
    backend = torch.distributed.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    flag = torch.tensor([1.0 if requested else 0.0], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


class PreemptionCallback(TrainerCallback):
    """Saves a checkpoint and stops training at the first step boundary after a preemption request."""

    def __init__(self):
        self.stopped_at_step: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        REQUEST.training = True

    def on_step_end(self, args, state, control, **kwargs):
        if _shared(REQUEST.signal_name is not None):
            REQUEST.signal_name = REQUEST.signal_name or "SIGTERM (on another process)"
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at_step = state.global_step
        return control

    def on_train_end(self, args, state, control, **kwargs):
        REQUEST.training = False
