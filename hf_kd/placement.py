"""Placing frozen models for a run: freeze, shard or hold whole (DeepSpeed ZeRO / FSDP), gather, save as own class.

The one place that knows how DeepSpeed and FSDP hold an inference-only model; every hf_kd trainer places its frozen
teacher through `prepare_teacher`, and saves a sharded student through `saved_as_own_class`.
"""

from __future__ import annotations

from contextlib import contextmanager
from copy import copy, deepcopy

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn


@contextmanager
def whole_model_loading():
    """`from_pretrained` builds a whole model, on this process alone, even while a ZeRO-3 run is configured
    (transformers would otherwise partition it with `deepspeed.zero.Init`: a collective the other processes never
    join). transformers reads the run's DeepSpeed config through one module-level reference, swapped out here."""
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def freeze(model: nn.Module) -> nn.Module:
    """No gradients, no dropout: the teacher's outputs depend on its inputs only."""
    model.requires_grad_(False)
    model.eval()
    return model


TEACHER_SHARDINGS = ("auto", "whole", "sharded")


def _zero_stage(accelerator: Accelerator) -> int | None:
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return None
    return accelerator.state.deepspeed_plugin.deepspeed_config["zero_optimization"]["stage"]


def shards_teacher(sharding: str, accelerator: Accelerator) -> bool:
    """Whether this run shards the teacher over its processes, for `teacher_sharding` `sharding`: `"auto"` under
    DeepSpeed ZeRO-3 only, `"sharded"` always (refused where nothing shards: only ZeRO-3 and FSDP do), `"whole"`
    never."""
    zero3 = _zero_stage(accelerator) == 3
    if sharding == "sharded" and not (zero3 or accelerator.distributed_type == DistributedType.FSDP):
        stage = _zero_stage(accelerator)
        setup = f"DeepSpeed ZeRO-{stage}" if stage is not None else f"{accelerator.distributed_type.value}"
        raise ValueError(
            f"teacher_sharding='sharded' needs DeepSpeed ZeRO-3 or FSDP (e.g. accelerate launch --config_file "
            f"examples/accelerate_configs/deepspeed_zero3.yaml or fsdp2.yaml), but this run is {setup}: nothing would "
            "shard the teacher. Use teacher_sharding='whole' (or 'auto') to hold it whole on every process."
        )
    return sharding == "sharded" or (sharding == "auto" and zero3)


def _gather_whole(model: nn.Module) -> nn.Module:
    """Give a model partitioned by ZeRO-3's `zero.Init` (built by `from_pretrained` while a ZeRO-3 run was configured)
    plain, whole parameters on this process: each is gathered from all processes, one at a time, and replaced by a
    copy of its full value (tied parameters stay tied). A collective; a model that is not partitioned is untouched."""
    if not any(hasattr(p, "ds_id") for p in model.parameters()):
        return model
    import deepspeed

    whole: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, parameter in list(module._parameters.items()):
            if parameter is None or not hasattr(parameter, "ds_id"):
                continue
            if id(parameter) not in whole:
                with deepspeed.zero.GatheredParameters([parameter]):
                    whole[id(parameter)] = nn.Parameter(parameter.data.clone(), requires_grad=False)
            module._parameters[name] = whole[id(parameter)]
    return model


def _prepare_deepspeed(model: nn.Module, accelerator: Accelerator, sharded: bool) -> nn.Module:
    """Wrap an inference-only model in its own DeepSpeed engine, as TRL does for reference models: `sharded` (under
    ZeRO-3), a ZeRO-3 engine shards it like the student; otherwise it runs whole with stage 0 (lower stages gain
    nothing for a model without optimizer state), gathered whole first if `zero.Init` partitioned it at load time."""
    import deepspeed

    config = deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    model_config = getattr(model, "config", None)
    # As TRL's `prepare_deepspeed`: configs of vision models list `hidden_sizes` (hf_kd's MLPs and CNNs among them).
    hidden_sizes = getattr(model_config, "hidden_sizes", None)
    hidden_size = max(hidden_sizes) if hidden_sizes else getattr(model_config, "hidden_size", None)
    if sharded and isinstance(hidden_size, int):
        config["zero_optimization"].update(
            {
                "reduce_bucket_size": hidden_size * hidden_size,
                "stage3_param_persistence_threshold": 10 * hidden_size,
                "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
            }
        )
    if not sharded:
        config["zero_optimization"]["stage"] = 0
        freeze(_gather_whole(model))
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine


class _OutsideInferenceMode:
    """Runs an FSDP-sharded module outside `torch.inference_mode` (still without gradients): FSDP allocates its
    gathered weights once, at the first forward, and an inference tensor made then (the precompute runs the teacher
    in inference mode) could not be refilled by a later forward outside it ("Inference tensors cannot be updated
    inplace outside InferenceMode"). Inputs made in inference mode are read as they are."""

    def __call__(self, *args, **kwargs):
        with torch.inference_mode(False), torch.no_grad():
            return super().__call__(*args, **kwargs)


def _outside_inference_mode(model: nn.Module) -> nn.Module:
    model.__class__ = type(type(model).__name__, (_OutsideInferenceMode, type(model)), {})
    return model


def _fully_shard(model: nn.Module, accelerator: Accelerator) -> nn.Module:
    """Shard an inference-only model under FSDP with the run's plugin settings (wrap policy, mixed precision, CPU
    offload, device mesh), resharded after every forward: the student's root unit keeps its gathered weights for the
    backward, which a teacher never runs. The policy finds the teacher's own layer classes (its `_no_split_modules`),
    not the student's, and the plugin itself is left as it was for the student."""
    plugin = copy(accelerator.state.fsdp_plugin)
    plugin.transformer_cls_names_to_wrap = None  # the names in the plugin are the student's layers
    if accelerator.is_fsdp2:
        from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy, get_module_children_bottom_up
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = getattr(accelerator, "torch_device_mesh", None)
        kwargs = {
            "reshard_after_forward": True,
            "offload_policy": plugin.cpu_offload,
            "mp_policy": plugin.mixed_precision_policy or MixedPrecisionPolicy(),
            "mesh": mesh[tuple(accelerator.parallelism_config.fsdp_dim_names)] if mesh is not None else None,
        }
        policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
        for module in get_module_children_bottom_up(model)[:-1] if policy is not None else []:
            if policy(module):
                fully_shard(module, **kwargs)
        return _outside_inference_mode(fully_shard(model, **kwargs))
    from functools import partial

    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy

    if isinstance(plugin.auto_wrap_policy, partial):  # bound to the student's layers by an earlier prepare
        plugin.auto_wrap_policy = plugin.auto_wrap_policy.func
    plugin.set_auto_wrap_policy(model)
    # FSDP1 keeps the root unit's weights gathered after a forward: give the teacher an auto-wrap policy.
    sharded = FullyShardedDataParallel(
        model,
        sharding_strategy=ShardingStrategy.FULL_SHARD,
        cpu_offload=plugin.cpu_offload,
        auto_wrap_policy=plugin.auto_wrap_policy,
        mixed_precision=plugin.mixed_precision_policy,
        use_orig_params=plugin.use_orig_params,
        limit_all_gathers=plugin.limit_all_gathers,
        device_id=accelerator.device,
    )
    return _outside_inference_mode(sharded)


def prepare_teacher(
    model: nn.Module, accelerator: Accelerator, dtype: torch.dtype | None = None, sharding: str = "auto"
) -> nn.Module:
    """Freeze the teacher and place it for the run the way Accelerate places the student.

    `sharding` (`DistillationConfig.teacher_sharding`, see `shards_teacher`) decides whether every process holds the
    whole teacher (its full weights in its dtype on each process; no communication) or about 1/N of it (N processes;
    each forward then all-gathers every layer, a collective all processes enter together):

    - DeepSpeed: its own inference engine (see `_prepare_deepspeed`): ZeRO-3 when sharded, else stage 0, whole.
    - FSDP, sharded: wrapped with the plugin's settings (see `_fully_shard`), no gradients.
    - FSDP, whole: `prepare_model(evaluation_mode=True)` neither wraps nor moves a model under FSDP, which would leave
      the teacher on the CPU (TRL issue #2580): it is placed whole on every process's device.
    - Otherwise: `prepare_model(evaluation_mode=True)`: device placement and the mixed-precision autocast, no DDP.

    `dtype` (e.g. `torch.bfloat16`) holds the teacher's weights in that precision: half the memory of float32 for a
    model that only runs inference; its logits are upcast to float32 by the losses.
    """
    sharded = shards_teacher(sharding, accelerator)
    freeze(model)
    if dtype is not None:
        model.to(dtype)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return _prepare_deepspeed(model, accelerator, sharded)
    model = accelerator.prepare_model(model, evaluation_mode=True)
    if accelerator.distributed_type == DistributedType.FSDP:
        model = _fully_shard(model.to(accelerator.device), accelerator) if sharded else model.to(accelerator.device)
    return freeze(model)


def is_fsdp1(model: nn.Module | None) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(model, FullyShardedDataParallel)


def is_sharded(model: nn.Module | None) -> bool:
    """True when `model`'s weights are partitioned over the processes (DeepSpeed ZeRO-3, FSDP2's DTensors, an FSDP1
    wrapper): its forward, and reading its whole weights, are collectives that every process must enter together."""
    from torch.distributed.tensor import DTensor

    if model is None:
        return False
    return is_fsdp1(model) or any(hasattr(p, "ds_id") or isinstance(p, DTensor) for p in model.parameters())


def whole_state(model: nn.Module):
    """`(name, tensor)` for every entry of `model.state_dict()`, whole: a ZeRO-3 parameter (an empty tensor here) is
    gathered from all processes, one at a time, while it is read; an FSDP2 DTensor too; an FSDP1 wrapper's full state
    dict is gathered by FSDP itself. A collective for a sharded model."""
    from torch.distributed.tensor import DTensor

    if is_fsdp1(model):  # its FULL_STATE_DICT (the default): whole tensors under the model's own names
        yield from model.state_dict().items()
        return
    parameters = dict(model.named_parameters()) if is_sharded(model) else {}
    for name, tensor in model.state_dict().items():
        if isinstance(tensor, DTensor):
            yield name, tensor.full_tensor()
            continue
        parameter = parameters.get(name)
        if parameter is None:
            yield name, tensor
            continue
        import deepspeed

        with deepspeed.zero.GatheredParameters([parameter]):
            yield name, parameter.data


def own_class(model: nn.Module) -> type:
    """`model`'s class, not the subclasses that FSDP2's `fully_shard` and `_outside_inference_mode` put on top."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(model).__mro__ if not issubclass(c, (FSDPModule, _OutsideInferenceMode)))


@contextmanager
def saved_as_own_class(model: torch.nn.Module):
    """Within the block, an FSDP2-wrapped model is of its own class again. `fully_shard` swaps the class for a
    generated `FSDP<Name>` subclass defined in torch's FSDP module: saved under it, a model with remote code (hf_kd's
    reference models) gets a config.json whose auto_map points at torch's module, and torch's files copied beside
    it, so the saved model would not load with `trust_remote_code=True`."""
    from torch.distributed.fsdp import FSDPModule

    generated = type(model)
    if not isinstance(model, FSDPModule):
        yield model
        return
    model.__class__ = next(base for base in generated.__bases__ if not issubclass(base, FSDPModule))
    try:
        yield model
    finally:
        model.__class__ = generated
