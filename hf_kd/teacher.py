"""The frozen teacher: loading, freezing and placement (through Accelerate)."""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn
from transformers.utils import logging

logger = logging.get_logger(__name__)


def auto_class_for(model: nn.Module):
    """The `AutoModelFor*` class of `model`'s task, read off its class name (`BertForSequenceClassification` ->
    `AutoModelForSequenceClassification`), as transformers names every task head."""
    name = type(model).__name__
    if "For" in name:
        auto_name = "AutoModel" + name[name.index("For") :]
        auto_cls = getattr(transformers, auto_name, None)
        if auto_cls is not None:
            return auto_cls
    raise ValueError(
        f"Cannot tell which Auto class loads a teacher for a student of class {name}: pass the teacher as a model "
        "instance (teacher_model=...) instead of a name or path."
    )


def resolve_init_kwargs(init_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """`from_pretrained` kwargs as given on the command line: a `"dtype": "bfloat16"` string becomes a torch dtype."""
    kwargs = dict(init_kwargs or {})
    for key in ("dtype", "torch_dtype"):
        value = kwargs.get(key)
        if isinstance(value, str) and value != "auto":
            dtype = getattr(torch, value, None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"teacher_model_init_kwargs[{key!r}] must name a torch dtype, got {value!r}.")
            kwargs[key] = dtype
    return kwargs


def load_teacher(
    name_or_path: str, student: nn.Module, init_kwargs: dict[str, Any] | None = None
) -> transformers.PreTrainedModel:
    """Load a teacher with the Auto class matching the student's task (local directory or Hub id)."""
    auto_cls = auto_class_for(student)
    logger.info(f"Loading the teacher {name_or_path} with {auto_cls.__name__}")
    return auto_cls.from_pretrained(name_or_path, **resolve_init_kwargs(init_kwargs))


def freeze(model: nn.Module) -> nn.Module:
    """No gradients, no dropout: the teacher's outputs depend on its inputs only."""
    model.requires_grad_(False)
    model.eval()
    return model


def _prepare_deepspeed(model: nn.Module, accelerator: Accelerator) -> nn.Module:
    """Wrap an inference-only model in its own DeepSpeed engine, as TRL does for reference models: ZeRO-3 shards it
    like the student; lower stages gain nothing for a model without optimizer state, so it runs with stage 0."""
    import deepspeed

    config = deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    stage = config["zero_optimization"]["stage"]
    model_config = getattr(model, "config", None)
    hidden_size = getattr(model_config, "hidden_size", None)
    if stage == 3 and isinstance(hidden_size, int):
        config["zero_optimization"].update(
            {
                "reduce_bucket_size": hidden_size * hidden_size,
                "stage3_param_persistence_threshold": 10 * hidden_size,
                "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
            }
        )
    if stage != 3:
        config["zero_optimization"]["stage"] = 0
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine


def prepare_teacher(model: nn.Module, accelerator: Accelerator) -> nn.Module:
    """Freeze the teacher and place it for the run the way Accelerate places the student.

    - DeepSpeed: its own inference engine (see `_prepare_deepspeed`).
    - FSDP: `prepare_model(evaluation_mode=True)` neither wraps nor moves a model under FSDP, which would leave the
      teacher on the CPU (TRL issue #2580). hf_kd keeps it whole, replicated on every process's device, on purpose:
      an inference-only teacher has no optimizer state to shard, and replication avoids an all-gather per step.
    - Otherwise: `prepare_model(evaluation_mode=True)`: device placement and the mixed-precision autocast, no DDP.
    """
    freeze(model)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return _prepare_deepspeed(model, accelerator)
    model = accelerator.prepare_model(model, evaluation_mode=True)
    if accelerator.distributed_type == DistributedType.FSDP:
        model.to(accelerator.device)
    return freeze(model)
