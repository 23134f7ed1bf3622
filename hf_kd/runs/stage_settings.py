"""What determines a training stage's result, recorded beside it so that a rerun reuses the stage only when it would
train the same model.

[`stage_settings`] reads them off the stage's Trainer before it trains: the model's class and config (architecture,
classes), the training arguments that change the trained weights (seed, epochs, learning rate, batch size, ...; for a
distillation stage also temperature, alpha, loss, feature terms), a fingerprint of the teacher's weights, of the
training data and of the collator's augmentation. Arguments that only say where and how often to log, save, evaluate
or publish are left out ([`NOT_RESULT`]): changing them on a rerun is fine. [`settings_differences`] names what
differs between two records, as the user would type it (`--temperature: 2.0 (recorded) != 4.0 (now)`).
"""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

import datasets
import torch
from accelerate.utils import extract_model_from_parallel
from torch import nn
from transformers import Trainer, TrainingArguments

from ..data import InMemoryDataset
from ..placement import is_fsdp1, own_class, whole_state

# TrainingArguments / DistillationConfig fields that do not change the trained weights: where and how often the run
# logs, saves, evaluates and publishes, where it runs, and how the teacher is loaded (its weights are fingerprinted).
NOT_RESULT = {
    "output_dir", "logging_strategy", "logging_steps", "logging_first_step", "log_on_each_node",
    "logging_nan_inf_filter", "include_num_input_tokens_seen", "log_level", "log_level_replica", "disable_tqdm",
    "report_to", "run_name", "project", "trackio_space_id", "trackio_bucket_id", "trackio_static_space_id",
    "eval_steps", "eval_delay", "per_device_eval_batch_size", "prediction_loss_only", "eval_on_start",
    "eval_do_concat_batches", "eval_use_gather_object", "eval_accumulation_steps", "include_for_metrics",
    "batch_eval_metrics", "save_only_model", "save_strategy", "save_steps", "save_on_each_node", "save_total_limit",
    "enable_jit_checkpoint", "push_to_hub", "hub_token", "hub_private_repo", "hub_model_id", "hub_strategy",
    "hub_always_push", "hub_revision", "restore_callback_states_from_checkpoint", "use_cpu",
    "dataloader_pin_memory", "dataloader_persistent_workers", "dataloader_prefetch_factor", "ddp_timeout", "debug",
    "skip_memory_metrics", "do_train", "do_eval", "do_predict", "resume_from_checkpoint", "local_rank",
    "torch_empty_cache_steps", "teacher_model_name_or_path", "teacher_model_init_kwargs", "teacher_batch_size",
    "teacher_sharding",
}  # fmt: skip
_TRAINING_FIELDS = {f.name for f in fields(TrainingArguments)}
# Model config entries that say nothing about the model itself: save_pretrained sets `architectures`, `auto_map` and
# `dtype`, loading sets `_name_or_path`, so a teacher trained here and the same teacher loaded back differ in them
# alone (the weights' dtype is hashed with the weights); a classifier's forward sets `problem_type` at its first loss
# (from the labels' dtype), so a trained teacher has it and the same one rebuilt before loading its weights does not.
_CONFIG_NOISE = {"transformers_version", "_name_or_path", "architectures", "auto_map", "dtype", "torch_dtype"}
_CONFIG_NOISE.add("problem_type")
# Settings that are not command-line arguments, as a message names them.
LABELS = {
    "model_class": "the model's class",
    "teacher_class": "the teacher's class",
    "teacher_config": "the teacher's config",
    "teacher_weights": "the teacher's weights (fingerprint)",
    "train_dataset": "the training data (fingerprint)",
    "data_collator": "the training batches' collator / augmentation",
}


def _jsonable(value: Any) -> Any:
    """The value as the JSON record holds it, so that a recorded value and a fresh one compare equal."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def _hash_arrow(digest, table, columns) -> None:
    for name in columns:
        digest.update(name.encode())
        for chunk in table.column(name).chunks:
            digest.update(f"{chunk.type}:{chunk.offset}:{len(chunk)}".encode())
            for buffer in chunk.buffers():
                if buffer is not None:
                    digest.update(memoryview(buffer))


def dataset_fingerprint(dataset) -> str | None:
    """A hash of the training data's content, the teacher's columns (`teacher_*`: precomputed logits and features)
    left out: the teacher is fingerprinted on its own, and a `datasets` fingerprint of precomputed data depends on
    how the teacher object was made (trained here, or loaded back), not only on what it computes."""
    if dataset is None:
        return None
    import xxhash

    digest = xxhash.xxh64()
    if isinstance(dataset, datasets.Dataset):
        _hash_arrow(digest, dataset.data, [name for name in dataset.column_names if not name.startswith("teacher_")])
        if dataset._indices is not None:  # a selection / shuffle of the table
            _hash_arrow(digest, dataset._indices, dataset._indices.column_names)
        return digest.hexdigest()
    if isinstance(dataset, InMemoryDataset):
        for name in sorted(dataset.columns):
            if name.startswith("teacher_"):
                continue
            tensor = dataset.columns[name]
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()
    return f"{type(dataset).__name__} of {len(dataset)} rows" if hasattr(dataset, "__len__") else type(dataset).__name__


def weights_fingerprint(model: nn.Module) -> str:
    """A hash of every weight and buffer of `model` (gathered whole when sharded), by name and dtype."""
    import xxhash

    unwrapped = extract_model_from_parallel(model)
    digest = xxhash.xxh64()
    for name, tensor in whole_state(model if is_fsdp1(model) else unwrapped):
        digest.update(f"{name}:{tensor.dtype}".encode())
        digest.update(tensor.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()


def _model_record(model) -> tuple[str, dict]:
    model = extract_model_from_parallel(model)
    config = getattr(model, "config", None)
    config_dict = config.to_diff_dict() if hasattr(config, "to_diff_dict") else {}
    return own_class(model).__name__, {k: v for k, v in config_dict.items() if k not in _CONFIG_NOISE}


def stage_settings(trainer: Trainer) -> dict[str, Any]:
    """What decides the model `trainer` will train (see the module docstring), as JSON values."""
    args = trainer.args.to_dict()
    distils = type(trainer) is not Trainer  # a plain Trainer (teacher, baseline) ignores the distillation fields
    settings = {
        name: value
        for name, value in args.items()
        if name not in NOT_RESULT and (distils or name in _TRAINING_FIELDS) and not name.startswith("_")
    }
    peers = getattr(trainer, "peers", None)  # mutual learning: every peer is trained
    models = list(peers) if peers is not None else [trainer.model]
    records = [_model_record(model) for model in models]
    settings["model_class"] = ",".join(name for name, _ in records)
    for k, (_, config) in enumerate(records):
        settings[f"model_config{'' if len(records) == 1 else f'_{k}'}"] = config
    teacher = getattr(trainer, "teacher_model", None)
    if teacher is not None:
        settings["teacher_class"], settings["teacher_config"] = _model_record(teacher)
        settings["teacher_weights"] = weights_fingerprint(teacher)
    settings["train_dataset"] = dataset_fingerprint(trainer.train_dataset)
    collator = trainer.data_collator
    settings["data_collator"] = [type(collator).__name__, getattr(collator, "recipe", None)]
    return _jsonable(settings)


def _label(name: str) -> str:
    if name in LABELS:
        return LABELS[name]
    if name.startswith("model_config"):
        return "the model's architecture (config)"
    if name == "teacher_config":
        return "the teacher's config"
    return f"--{name}"


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def settings_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """One line per setting that differs: its name and both values (a model config: each differing entry)."""
    lines = []
    for name in sorted(set(recorded) | set(current)):
        before, now = recorded.get(name), current.get(name)
        if before == now:
            continue
        if "_config" in name and isinstance(before, dict) and isinstance(now, dict):
            for key in sorted(set(before) | set(now)):
                if before.get(key) != now.get(key):
                    lines.append(
                        f"{_label(name)} {key!r}: {_short(before.get(key))} (recorded) != {_short(now.get(key))} (now)"
                    )
            continue
        lines.append(f"{_label(name)}: {_short(before)} (recorded) != {_short(now)} (now)")
    return lines
