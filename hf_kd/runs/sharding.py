"""The examples under sharded training (DeepSpeed ZeRO-3, FSDP): saving with every process, measuring whole models.

Under ZeRO-3 or FSDP each process holds a shard of every model's weights, so the end of a run cannot be the main
process's alone: every process takes part in saving (the Trainer's `save_model`, which gathers the shards: ZeRO-3
needs `stage3_gather_16bit_weights_on_model_save`, accelerate's `zero3_save_16bit_model: true`; FSDP needs
`FULL_STATE_DICT`), then the main process measures the saved models reloaded whole from disk. DDP and ZeRO-1/2
hold whole weights on every process and are left as they were.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType, extract_model_from_parallel
from transformers.utils import logging

from ..placement import is_sharded, saved_as_own_class, whole_model_loading
from ..teacher.loading import auto_class_for

logger = logging.get_logger(__name__)

FULL_STATE_DICT = "FULL_STATE_DICT"


def check_sharded_saving(config) -> None:
    """Refuse, before anything is trained, the sharded setups whose models the examples could not save whole.

    FSDP with a `SHARDED_STATE_DICT` / `LOCAL_STATE_DICT`: `Trainer.save_model` writes a model only under
    `FULL_STATE_DICT`, so the report would measure nothing. DeepSpeed ZeRO-3 without 16-bit gathering on save: the
    Trainer writes a DeepSpeed checkpoint instead of a model that `from_pretrained` loads. The launch environment is
    read (accelerate exports the config to it), as `PartialState` would report plain DDP for an FSDP launch on a CPU."""
    from accelerate.utils import parse_flag_from_env

    fsdp_config = getattr(config, "fsdp_config", None) or {}
    if parse_flag_from_env("ACCELERATE_USE_FSDP") or getattr(config, "fsdp", None):
        state_dict_type = os.environ.get("FSDP_STATE_DICT_TYPE") or fsdp_config.get("state_dict_type", FULL_STATE_DICT)
        if state_dict_type != FULL_STATE_DICT:
            raise ValueError(
                f"FSDP with fsdp_state_dict_type {state_dict_type}: Trainer.save_model writes a model only under "
                f"{FULL_STATE_DICT}, so the examples would save and measure nothing. Set fsdp_state_dict_type: "
                f"{FULL_STATE_DICT} (as examples/accelerate_configs/fsdp2.yaml does)."
            )
    zero3 = parse_flag_from_env("ACCELERATE_USE_DEEPSPEED") and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"
    # With a DeepSpeed JSON file (ACCELERATE_DEEPSPEED_CONFIG_FILE) the setting lives there: the Trainer warns then.
    configured = parse_flag_from_env("ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL")
    if zero3 and not configured and not os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
        raise ValueError(
            "DeepSpeed ZeRO-3 without zero3_save_16bit_model: Trainer.save_model would write a DeepSpeed checkpoint "
            "(its shards), not a model that from_pretrained loads, so the examples could not measure it. Set "
            "zero3_save_16bit_model: true (stage3_gather_16bit_weights_on_model_save), as "
            "examples/accelerate_configs/deepspeed_zero3.yaml does."
        )


def allow_another_trainer() -> None:
    """Let the next `Trainer` of a DeepSpeed run build its `Accelerator`: accelerate refuses a second one given a
    DeepSpeed plugin, and every Trainer passes its arguments' plugin. Accelerate's shared state is dropped (not the
    process group, `PartialState`), so each stage's Trainer starts its own, as the first did; earlier stages keep
    their engines."""
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState().distributed_type == DistributedType.DEEPSPEED:
        AcceleratorState._reset_state()


def holds_shards(model: torch.nn.Module) -> bool:
    """True when this process holds only a shard of `model`'s weights (ZeRO-3, or an FSDP run)."""
    return is_sharded(model) or PartialState().distributed_type == DistributedType.FSDP


def _save_sharded(run, path: Path) -> None:
    """Every process: write `run`'s model whole to `path`, gathering its shards."""
    if run.trainer is not None:
        with saved_as_own_class(run.trainer.model):  # the Trainer gathers ZeRO-3 / FSDP shards for the main process
            run.trainer.save_model(str(path))
        return
    import deepspeed  # a loaded, never trained ZeRO-3 model (e.g. the teacher): gather it whole, once

    with deepspeed.zero.GatheredParameters(list(run.model.parameters())):
        if PartialState().is_main_process:
            run.model.save_pretrained(path, state_dict={k: v.clone() for k, v in run.model.state_dict().items()})
    PartialState().wait_for_everyone()


def gather_sharded_runs(runs: Sequence, output_dir: str | os.PathLike) -> list:
    """Every process: save each sharded run's model whole into `output_dir/<name>`; on the main process, return the
    runs with those models reloaded whole from disk (what the report measures and the card describes), elsewhere and
    for unsharded runs the runs as they were."""
    runs = list(runs)
    state = PartialState()
    for index, run in enumerate(runs):
        if not holds_shards(run.model):
            continue
        path = Path(output_dir) / run.name
        _save_sharded(run, path)
        state.wait_for_everyone()
        if state.is_main_process:
            with whole_model_loading():
                model = auto_class_for(extract_model_from_parallel(run.model)).from_pretrained(path).eval()
            logger.info(f"{run.name}: saved whole from its shards to {path}; measuring the reloaded model.")
            runs[index] = replace(run, model=model)
    return runs
