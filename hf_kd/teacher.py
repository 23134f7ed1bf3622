"""The frozen teacher: loading, freezing and placement (through Accelerate)."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from copy import copy, deepcopy
from typing import Any

import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import DistributedType, extract_model_from_parallel
from torch import nn
from transformers.utils import logging

from . import batch as batch_convention
from .data import generic_labels

logger = logging.get_logger(__name__)


def __getattr__(name: str):
    # The precompute lives in hf_kd.precompute, which builds on this module; `from hf_kd.teacher import
    # add_teacher_logits` keeps working without an import cycle.
    if name == "add_teacher_logits":
        from .precompute import add_teacher_logits

        return add_teacher_logits
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def logits_of(outputs) -> torch.Tensor:
    """The logits of a model's outputs: a `ModelOutput` (or dict) with `logits`, or a tuple with them first."""
    return outputs["logits"] if isinstance(outputs, dict) else outputs[0]


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


def load_teacher(
    name_or_path: str, student: nn.Module, init_kwargs: dict[str, Any] | None = None, whole: bool = False
) -> transformers.PreTrainedModel:
    """Load a teacher with the Auto class matching the student's task (local directory or Hub id); `whole`: never
    partitioned at load time by a ZeRO-3 run's `zero.Init` (see `whole_model_loading`)."""
    auto_cls = auto_class_for(student)
    kwargs = resolve_init_kwargs(init_kwargs)
    config_kwargs = {k: v for k, v in kwargs.items() if k in ("revision", "trust_remote_code", "token", "cache_dir")}
    config = transformers.AutoConfig.from_pretrained(name_or_path, **config_kwargs)
    remote = auto_cls.__name__ in (getattr(config, "auto_map", None) or {})
    if not remote and type(config) not in auto_cls._model_mapping:  # e.g. a BERT text classifier, an image student
        raise ValueError(
            f"The teacher {name_or_path} (model_type {config.model_type!r}) and the student "
            f"({type(student).__name__}) take different inputs: the student reads "
            f"{getattr(student, 'main_input_name', '?')!r} and {config.model_type!r} has no {auto_cls.__name__} "
            "head. Give a teacher trained for the student's task and modality."
        )
    logger.info(f"Loading the teacher {name_or_path} with {auto_cls.__name__}")
    with whole_model_loading() if whole else nullcontext():
        return auto_cls.from_pretrained(name_or_path, **kwargs)


def resolve_teacher(teacher, student: nn.Module, args) -> nn.Module | None:
    """The teacher a [`DistillationTrainer`] distils: `teacher` as given (default: `args.teacher_model_name_or_path`),
    a name or path loaded with the Auto class of the student's task, or several teachers combined into one
    [`hf_kd.ensemble.TeacherEnsemble`]."""
    from .ensemble import (  # a module above this one (it checks teachers with ours)
        TeacherEnsemble,
        ensemble_for,
    )

    teacher = args.teacher_model_name_or_path if teacher is None else teacher
    if isinstance(teacher, (list, tuple, TeacherEnsemble)):  # several teachers behave as one
        return ensemble_for(teacher, student, args)
    if isinstance(teacher, str):
        whole = getattr(args, "teacher_sharding", "auto") == "whole"
        return load_teacher(teacher, student, args.teacher_model_init_kwargs, whole=whole)
    if teacher is not None and args.teacher_model_init_kwargs:
        raise ValueError(
            "teacher_model_init_kwargs only applies when the teacher is loaded from a name or path, but "
            "teacher_model is already a model instance."
        )
    return teacher


def freeze(model: nn.Module) -> nn.Module:
    """No gradients, no dropout: the teacher's outputs depend on its inputs only."""
    model.requires_grad_(False)
    model.eval()
    return model


def check_compatible(student: nn.Module, teacher: nn.Module) -> None:
    """Refuse a teacher whose outputs do not line up with the student's classes."""
    if teacher is student:
        raise ValueError(
            "teacher_model is the student model itself (the same object): pass a separate, frozen teacher model."
        )
    s_cfg, t_cfg = getattr(student, "config", None), getattr(teacher, "config", None)
    if s_cfg is None or t_cfg is None:
        return
    s_name, t_name = type(student).__name__, type(teacher).__name__
    s_n, t_n = getattr(s_cfg, "num_labels", None), getattr(t_cfg, "num_labels", None)
    if s_n is not None and t_n is not None and s_n != t_n:
        raise ValueError(
            f"The student ({s_name}) has num_labels={s_n} but the teacher ({t_name}) has num_labels={t_n}: "
            "their logits cannot be compared."
        )
    s_labels = {int(k): v for k, v in (getattr(s_cfg, "id2label", None) or {}).items()}
    t_labels = {int(k): v for k, v in (getattr(t_cfg, "id2label", None) or {}).items()}
    # Generic names say nothing about the order of the classes; only two real label lists can disagree.
    if not generic_labels(s_labels) and not generic_labels(t_labels) and s_labels != t_labels:
        raise ValueError(
            f"The student ({s_name}) and the teacher ({t_name}) order their classes differently: student "
            f"id2label={s_labels}, teacher id2label={t_labels}. Distilling would train against the wrong classes; "
            "give both models the same id2label."
        )


def _vocabulary_sizes(model: nn.Module) -> set[int]:
    """The sizes of the token vocabulary a model reads: `config.vocab_size` and its input embedding's rows."""
    sizes = set()
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(vocab_size, int):
        sizes.add(vocab_size)
    try:
        embeddings = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):  # not a token model (a PreTrainedModel without embeddings)
        embeddings = None
    if isinstance(embeddings, nn.Embedding):
        sizes.add(embeddings.num_embeddings)
    return sizes


def check_same_inputs(
    student: nn.Module, teacher: nn.Module, student_tokenizer: Any = None, columns: list[str] | None = None
) -> None:
    """Refuse a teacher that cannot read the student's inputs, when the data's `columns` carry no `teacher_*` inputs
    of its own: models with another main input (a text teacher for an image student), or another token vocabulary
    (the teacher would read the student's token ids as its own: garbage, or torch's bare `IndexError`). Unknown
    columns (a plain torch dataset) are not checked."""
    if columns is None or batch_convention.distillation_columns(columns):
        return
    s_name, t_name = type(student).__name__, type(teacher).__name__
    s_input = getattr(student, "main_input_name", None)
    t_input = getattr(teacher, "main_input_name", None)
    if s_input and t_input and s_input != t_input:
        raise ValueError(
            f"The student ({s_name}) and the teacher ({t_name}) take different inputs: the student reads "
            f"{s_input!r}, the teacher {t_input!r}. Distil from a teacher of the same modality, or give the teacher "
            f"its own inputs as a 'teacher_{t_input}' column."
        )
    s_sizes, t_sizes = _vocabulary_sizes(student), _vocabulary_sizes(teacher)
    if student_tokenizer is not None and hasattr(student_tokenizer, "get_vocab"):
        s_sizes.add(len(student_tokenizer))  # ids up to the tokenizer's length reach the teacher's embedding
    if s_sizes and t_sizes and max(s_sizes) != max(t_sizes):
        raise ValueError(
            f"The teacher ({t_name}, vocab_size {max(t_sizes)}) and the student ({s_name}, vocab_size "
            f"{max(s_sizes)}) have different vocabularies, and the data has no teacher_input_ids: the teacher would "
            "read the student's token ids as its own. Tokenize the text for both models with "
            "hf_kd.data.tokenize_dataset(dataset, student_tokenizer, text_columns, ..., teacher_tokenizer=...) "
            "(it adds teacher_input_ids / teacher_attention_mask), and collate with "
            "hf_kd.data.DataCollatorWithTeacherPadding(student_tokenizer, teacher_tokenizer)."
        )


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
            f"examples/accelerate_configs/deepspeed_zero3.yaml or fsdp.yaml), but this run is {setup}: nothing would "
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


def cast_floating_inputs(inputs: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """Float inputs (pixel values, embeddings) in the teacher's own dtype: a bf16/fp16 teacher held for inference
    only would otherwise meet float32 pixels (integer token ids are left alone)."""
    parameter = next(iter(model.parameters()), None)
    if parameter is None or not parameter.is_floating_point() or parameter.dtype == torch.float32:
        return inputs
    return {
        key: value.to(parameter.dtype) if torch.is_tensor(value) and value.is_floating_point() else value
        for key, value in inputs.items()
    }


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


TEACHER_LOGITS_DTYPES = ("float32", "float16")
TEACHER_DTYPES = ("float32", "bfloat16", "float16")


def has_transform(dataset) -> bool:
    """True when `dataset` changes its rows on the fly (`set_transform` / `with_transform`): what the teacher sees
    once up front would then differ from what the student trains on."""
    return getattr(dataset, "format", {}).get("type") == "custom"


def _is_fsdp1(model: nn.Module | None) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(model, FullyShardedDataParallel)


def is_sharded(model: nn.Module | None) -> bool:
    """True when `model`'s weights are partitioned over the processes (DeepSpeed ZeRO-3, FSDP2's DTensors, an FSDP1
    wrapper): its forward, and reading its whole weights, are collectives that every process must enter together."""
    from torch.distributed.tensor import DTensor

    if model is None:
        return False
    return _is_fsdp1(model) or any(hasattr(p, "ds_id") or isinstance(p, DTensor) for p in model.parameters())


def _whole_state(model: nn.Module):
    """`(name, tensor)` for every entry of `model.state_dict()`, whole: a ZeRO-3 parameter (an empty tensor here) is
    gathered from all processes, one at a time, while it is read; an FSDP2 DTensor too; an FSDP1 wrapper's full state
    dict is gathered by FSDP itself. A collective for a sharded model."""
    from torch.distributed.tensor import DTensor

    if _is_fsdp1(model):  # its FULL_STATE_DICT (the default): whole tensors under the model's own names
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


def check_fixed_inputs(dataset, data_collator, carries_logits: bool) -> None:
    """Teacher logits computed once must meet the inputs they were computed on: refuse a collator that augments
    (marked `augments_inputs`, as [`~hf_kd.data.RandomShiftCollator`]) and a transform added after a `teacher_logits`
    column (a transform before precomputing is refused by the precompute itself)."""
    if getattr(data_collator, "augments_inputs", False):
        source = "carried by the dataset" if carries_logits else "precomputed (precompute_teacher_logits=True)"
        raise ValueError(
            f"The data_collator ({type(data_collator).__name__}) changes the inputs at random (augments_inputs=True), "
            f"but the teacher's logits are {source}: they were computed on the unchanged inputs. Use a collator "
            "without augmentation, or keep the teacher live (precompute_teacher_logits=False, no teacher_logits)."
        )
    if carries_logits and has_transform(dataset):
        raise ValueError(
            "The train dataset has both a teacher_logits column and an on-the-fly transform (set_transform / "
            "with_transform, e.g. random augmentation): the logits were computed before the transform and would "
            "not match the inputs the student trains on. Drop the transform, or remove the teacher_logits "
            "column and keep the teacher live."
        )


def _own_class(model: nn.Module) -> type:
    """`model`'s class, not the subclasses that FSDP2's `fully_shard` and `_outside_inference_mode` put on top."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(model).__mro__ if not issubclass(c, (FSDPModule, _OutsideInferenceMode)))


def teacher_fingerprint(teacher: nn.Module) -> str:
    """A hash of everything that decides the teacher's outputs: its class, config and every weight and buffer.

    Part of the cache key of precomputed logits, so that another teacher (or the same one after more training)
    never reuses stale logits."""
    import xxhash

    model = extract_model_from_parallel(teacher)  # a DDP / DeepSpeed wrapper hashes like the model it wraps
    digest = xxhash.xxh64()
    digest.update(_own_class(model).__qualname__.encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        digest.update(config.to_json_string(use_diff=False).encode())
    for name, tensor in _whole_state(teacher if _is_fsdp1(teacher) else model):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()


def teacher_input_columns(columns: list[str], teacher: nn.Module) -> list[str]:
    """The columns the teacher reads: its own `teacher_*` columns when there are any, otherwise the columns its
    `forward` accepts (labels excluded: the teacher's loss is never needed)."""
    import inspect

    own = batch_convention.teacher_input_columns(columns)
    if own:
        return own
    model = extract_model_from_parallel(teacher)
    # An ensemble of teachers (hf_kd.ensemble) names the inputs its teachers read.
    accepted = set(getattr(model, "input_names", None) or inspect.signature(model.forward).parameters)
    accepted -= {"labels", "label", "return_dict"}
    found = [c for c in columns if c in accepted]
    if not found:
        raise ValueError(
            f"None of the dataset's columns {columns} is an input of the teacher ({type(model).__name__}.forward "
            f"takes {sorted(accepted)}): prepare the dataset (decode / tokenize) before computing teacher logits."
        )
    return found


def teacher_outputs(teacher: nn.Module, inputs: dict[str, Any], **forward_kwargs):
    """The frozen teacher's outputs (a `ModelOutput`) for its inputs, without gradients; float inputs are cast to the
    teacher's dtype. `forward_kwargs` (e.g. `output_hidden_states=True`) go to its `forward`."""
    with torch.no_grad():
        return teacher(**cast_floating_inputs(inputs, teacher), **forward_kwargs)


def check_teacher_logits(values, num_labels: int | None, name: str = "dataset") -> None:
    """Refuse teacher logits that cannot be soft targets for the student: the wrong number of classes (checked on the
    first row), or NaN / inf anywhere. `values`: an array or tensor `(N, ..., C)`, or one array per row (ragged
    token-level logits). `name` says which dataset holds them."""
    import numpy as np

    rows = values.numpy() if torch.is_tensor(values) else values
    first = np.asarray(rows[0])
    if num_labels is not None and first.shape[-1] != num_labels:
        raise ValueError(
            f"The {name}'s teacher_logits have {first.shape[-1]} columns per example but the student has "
            f"num_labels={num_labels}: the teacher logits must hold one value per class of the student."
        )
    if getattr(rows, "dtype", None) == object or isinstance(rows, list):
        finite = all(np.isfinite(np.asarray(row, dtype=np.float32)).all() for row in rows)
    else:
        finite = bool(np.isfinite(rows).all())
    if not finite:
        raise ValueError(
            f"The {name}'s teacher_logits column contains NaN or inf: the teacher's logits must be finite "
            "(check the model or API that produced them, and the storage dtype: float16 overflows above 65504)."
        )
