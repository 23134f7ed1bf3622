"""A run's start and its guards: the checks before anything is trained, the lock that keeps the output directory to
this run alone ([`hf_kd.runs.lock`]), the handlers that turn SIGTERM / SIGINT into a checkpoint and a clean stop
([`hf_kd.runs.preemption`]), and the examples' translation of the user's errors into messages and exit statuses.

    with prepare_run(config, experiment_args):   # checks, lock and handlers, held until the run ends
        ...                                      # the stages of hf_kd.runs.experiment
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from accelerate import PartialState
from transformers.utils import logging

from ..report.report import REPORT_JSON, has_finished_report
from ..training.configuration_distillation import DistillationConfig
from ..utils import DiskFullError
from .arguments import ExperimentArguments
from .experiment import STUDENT_CE_DIR, STUDENT_KD_DIR, TEACHER_DIR
from .lock import RUN_FILES, OutputDirInUseError, RunLock
from .preemption import PREEMPTED_EXIT_CODE, PreemptionHandlers, RunPreempted
from .resume import StageSettingsMismatch, check_resume_argument
from .sharding import check_sharded_saving

logger = logging.get_logger(__name__)


def _contents(output_dir: Path) -> list[Path]:
    """What a directory holds besides the lock of the run now holding it."""
    return [path for path in output_dir.iterdir() if path.name not in RUN_FILES] if output_dir.is_dir() else []


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool) -> None:
    """A run's output directory holds that run alone. A finished run is only replaced when asked: with `overwrite`
    the previous contents, finished or not, are moved aside first (to `<output_dir>.previous-<time>`), so no old
    file is measured, reported or pushed with the new run. Without it, an unfinished run is resumed (see
    [`hf_kd.runs.resume`]). The run's lock files stay where they are (the lock is held)."""
    output_dir = Path(output_dir)
    contents = _contents(output_dir)
    if overwrite and contents:
        aside = Path(f"{output_dir.absolute()}.previous-{time.strftime('%Y%m%d-%H%M%S')}")
        while aside.exists():
            aside = aside.with_name(aside.name + "-1")
        aside.mkdir()
        for path in contents:
            os.replace(path, aside / path.name)
        logger.warning(f"--overwrite_output_dir: the previous contents of {output_dir.absolute()} moved to {aside}.")
    elif has_finished_report(output_dir):
        raise FileExistsError(
            f"The output directory {os.path.abspath(output_dir)} already holds a finished run "
            f"({REPORT_JSON}). Choose another --output_dir, or pass --overwrite_output_dir to replace its results."
        )
    elif contents:
        logger.warning(
            f"{output_dir.absolute()} holds an unfinished run: its finished stages are kept and the others resume "
            "from their last complete checkpoint when their settings match (--overwrite_output_dir starts afresh)."
        )


# The errors that are the user's to fix (or to retry), not bugs: printed alone, without a traceback.
USER_ERRORS = (FileExistsError, OutputDirInUseError, StageSettingsMismatch, DiskFullError)


@contextmanager
def user_errors_as_messages():
    """For an example's `__main__`: an output directory that holds a finished run or another running run, a rerun
    whose settings differ from the stages it would reuse, a full disk: the message alone (no traceback), exit status
    1. A run stopped by SIGTERM / SIGINT after its checkpoint: how to resume, exit status [`PREEMPTED_EXIT_CODE`]."""
    try:
        yield
    except RunPreempted as stopped:
        print(f"stopped: {stopped}", file=sys.stderr)
        raise SystemExit(PREEMPTED_EXIT_CODE) from None
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


@contextmanager
def as_script():
    """A script's `__main__` (the examples, the tests' launched workers): user errors as messages
    ([`user_errors_as_messages`]), and once `main` returns, every process waits for the others and ends the process
    group, as accelerate asks of every script (`Accelerator.end_training`): left to the interpreter's exit, a gloo
    thread can be destroyed still running and abort a finished process ("terminate called without an active
    exception")."""
    with user_errors_as_messages():
        yield
    state = PartialState()
    state.wait_for_everyone()
    state.destroy_process_group()


def prepare_run(config: DistillationConfig, experiment_args: ExperimentArguments) -> ExitStack:
    """Checks before anything is trained (sharding, the resume arguments, a finished run in `output_dir`), the torch
    thread count, and the run's guards: the output directory's lock (main process) and the SIGTERM / SIGINT handlers.
    Returns them as a context manager that releases them: `with prepare_run(config, experiment_args): ...`."""
    check_sharded_saving(config)  # ZeRO-3 and FSDP: every process saves (hf_kd.runs.sharding); refuse what cannot
    if config.resume_from_checkpoint and experiment_args.overwrite_output_dir:
        raise ValueError(
            "--resume_from_checkpoint and --overwrite_output_dir contradict each other: overwriting moves the "
            "previous run, and its checkpoints, aside. Pass one of them."
        )
    stage_dirs = [Path(config.output_dir) / name for name in (TEACHER_DIR, STUDENT_KD_DIR, STUDENT_CE_DIR)]
    check_resume_argument(config, stage_dirs)
    guards = ExitStack()
    state = PartialState()
    try:
        if state.is_main_process:
            guards.enter_context(RunLock(config.output_dir))
            check_output_dir(config.output_dir, experiment_args.overwrite_output_dir)
        state.wait_for_everyone()
        guards.enter_context(PreemptionHandlers())
    except BaseException:
        guards.close()
        raise
    if experiment_args.torch_num_threads:
        torch.set_num_threads(experiment_args.torch_num_threads)
    return guards
