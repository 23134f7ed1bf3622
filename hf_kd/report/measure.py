"""Measuring one model for the report: accuracy, agreement with the teacher, size, and batch-1 latency.

[`measure_model`] scores and times a model on the test split and returns its [`ModelResult`], one row of
[`hf_kd.report.DistillationReport`] (which re-exports everything here).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..batch import model_inputs
from ..data import collate_batches
from ..teacher.loading import logits_of

MODEL_LABELS = {
    "teacher": "Teacher", "student_ce": "Student (CE only)", "student_kd": "Student (KD)",
    "ensemble": "Teacher ensemble", "student_kd_direct": "Student (KD, direct from the teacher)",
}  # fmt: skip
# Numbered models of one kind: an ensemble's teachers (`teacher_0`, ...), a chain's assistants (`assistant_1`, ...).
INDEXED_LABELS = {"teacher": "Teacher {}", "assistant": "Assistant {} (KD)"}


def model_label(name: str) -> str:
    """The report's words for a model name: [`MODEL_LABELS`], a numbered kind of [`INDEXED_LABELS`], else the name."""
    kind, _, index = name.rpartition("_")
    if name not in MODEL_LABELS and index.isdigit() and kind in INDEXED_LABELS:
        return INDEXED_LABELS[kind].format(index)
    return MODEL_LABELS.get(name, name)
# Batch-1 latency: warm-up calls first, then this many passes over the timed examples.
LATENCY_WARMUP, LATENCY_PASSES = 50, 10

@dataclass
class ModelResult:
    """One row of the report. `accuracy` and `agreement_with_teacher` are fractions in [0, 1]; `latency_ms_iqr` is
    the interquartile range of the single batch-1 calls (the spread of `latency_ms`)."""

    name: str
    label: str
    path: str
    parameters: int
    size_mb: float
    train_time_s: float | None
    eval_time_s: float
    latency_ms: float
    accuracy: float
    agreement_with_teacher: float
    latency_ms_iqr: float | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------------------------------


def count_parameters(model: nn.Module) -> int:
    """All parameters, trainable or not (the teacher is frozen but its size is the point)."""
    if hasattr(model, "num_parameters"):  # a PreTrainedModel
        return int(model.num_parameters())
    return sum(p.numel() for p in model.parameters())


def directory_size_mb(path: str | os.PathLike) -> float:
    """Size on disk of a saved model directory (weights, config, processor), in MB (10**6 bytes). The Trainer's
    `checkpoint-*` folders are left out: they hold optimizer states of the run, not the model that ships; so are
    files named `_*` (a run's own bookkeeping, which `Trainer.push_to_hub` does not upload either)."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory: save the model with save_pretrained first.")
    return sum(
        f.stat().st_size
        for f in path.rglob("*")
        if f.is_file()
        and not f.name.startswith("_")
        and not any(part.startswith(f"{PREFIX_CHECKPOINT_DIR}-") for part in f.relative_to(path).parts)
    ) / 1e6


def _batches(dataset, batch_size: int, data_collator: Callable | None) -> DataLoader:
    """The dataset in order, collated as a training loop would: an in-memory dataset hands whole batches to
    `collate_batches` (the default), a [`~datasets.Dataset`] hands rows to the collator (a padding one for text)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=data_collator or collate_batches)


def _on(device: torch.device, inputs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}


def dataset_labels(dataset) -> np.ndarray:
    """The `labels` column of a [`~datasets.Dataset`] or an in-memory dataset, as an array (for data decoded on the
    fly, what its transform's `labels_of` reads off the raw rows without decoding them)."""
    columns = getattr(dataset, "columns", None)  # hf_kd.data.InMemoryDataset
    if isinstance(columns, dict):
        return columns["labels"].numpy()
    transform = getattr(dataset, "format", {}).get("format_kwargs", {}).get("transform")
    if "labels" not in dataset.column_names and hasattr(transform, "labels_of"):
        return np.asarray(transform.labels_of(dataset))  # made on the fly: read off the raw label column
    return np.asarray(dataset.with_format("numpy", columns=["labels"])[:]["labels"])


def label_statistics(labels: np.ndarray) -> dict[str, Any]:
    """`num_test_examples` and `majority_class_accuracy` (the accuracy of always answering the most frequent label)
    of the test labels, as [`DistillationReport`] takes them."""
    labels = np.asarray(labels).reshape(-1)
    counts = np.unique(labels[labels != -100], return_counts=True)[1]
    n = int(counts.sum())
    return {"num_test_examples": n, "majority_class_accuracy": float(counts.max() / n) if n else None}


@torch.inference_mode()
def predict(
    model: nn.Module, dataset, batch_size: int = 256, data_collator: Callable | None = None, role: str = "student"
) -> tuple[np.ndarray, float]:
    """Class predictions over `dataset` and the wall time in seconds of the whole pass, collation included (eval
    mode, no gradients). `data_collator` and `role` as in [`measure_model`]."""
    model.eval()
    device = next(model.parameters()).device
    predictions = []
    start = time.perf_counter()
    for batch in _batches(dataset, batch_size, data_collator):
        predictions.append(logits_of(model(**_on(device, model_inputs(batch, role)))).argmax(-1).cpu())
    elapsed = time.perf_counter() - start
    return torch.cat(predictions).numpy(), elapsed


def batch1_examples(
    model: nn.Module, dataset, num_examples: int = 200, data_collator: Callable | None = None, role: str = "student"
) -> list[dict[str, Any]]:
    """The first `num_examples` test examples one at a time (batch size 1, unpadded), collated and already on the
    model's device: what [`interleaved_latencies_ms`] times."""
    device = next(model.parameters()).device
    examples = []
    for batch in _batches(dataset, 1, data_collator):
        if len(examples) == num_examples:
            break
        examples.append(_on(device, model_inputs(batch, role)))
    return examples


def _timed_calls(model: nn.Module, examples: Sequence[Mapping[str, Any]]) -> list[float]:
    device = next(model.parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda device: None)
    times = []
    for example in examples:
        start = time.perf_counter()
        model(**example)
        sync(device)
        times.append(time.perf_counter() - start)
    return times


@torch.inference_mode()
def interleaved_latencies_ms(timed: Sequence[tuple[nn.Module, Sequence[Mapping[str, Any]]]]) -> list[tuple[float, float]]:
    """
    Batch-1 latency of several models, in milliseconds, measured in one window. After [`LATENCY_WARMUP`] calls
    each, [`LATENCY_PASSES`] passes time every model on each of its examples in turn, so a busy or slow moment of
    the machine falls on all the models of that pass alike and their ratios hold. A model's latency is its fastest
    pass's median call: on a shared machine the slow passes measure the neighbours (a virtual CPU here switches
    between two speeds about 1.7x apart within seconds), the fastest one what the model costs (`timeit`'s rule).

    Args:
        timed: `(model, examples)` pairs, the examples from [`batch1_examples`].

    Returns:
        Per model, `(latency, iqr)`: that median, and the interquartile range of all its single calls (their spread).
    """
    for model, examples in timed:
        model.eval()
        for i in range(LATENCY_WARMUP):
            model(**examples[i % len(examples)])
    passes = [[] for _ in timed]
    for _ in range(LATENCY_PASSES):
        for calls, (model, examples) in zip(passes, timed):
            calls.append(_timed_calls(model, examples))
    return [latency_statistics(calls) for calls in passes]


def latency_statistics(passes: Sequence[Sequence[float]]) -> tuple[float, float]:
    """`(latency, iqr)` in milliseconds from one model's call times in seconds, a list per pass: the fastest pass's
    median call, and the interquartile range of all the calls."""
    p25, p75 = np.percentile(passes, [25, 75])
    return float(np.min(np.median(passes, axis=1)) * 1000), float((p75 - p25) * 1000)


def latency_ms(
    model: nn.Module, dataset, num_examples: int = 200, data_collator: Callable | None = None, role: str = "student"
) -> tuple[float, float]:
    """One model's batch-1 latency and spread, `(latency, iqr)` in milliseconds, as [`interleaved_latencies_ms`]
    measures it (to compare models, measure them together there)."""
    examples = batch1_examples(model, dataset, num_examples, data_collator, role)
    return interleaved_latencies_ms([(model, examples)])[0]


def measure_model(
    name: str,
    model: nn.Module,
    dataset,
    compute_accuracy: Callable[[np.ndarray, np.ndarray], float],
    saved_path: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    train_time_s: float | None = None,
    teacher_predictions: np.ndarray | None = None,
    batch_size: int = 256,
    latency_examples: int = 200,
    data_collator: Callable | None = None,
    role: str = "student",
    latency: tuple[float, float] | None = None,
) -> tuple[ModelResult, np.ndarray]:
    """
    Score and time one model on the test split.

    Args:
        name (`str`): `"teacher"`, `"student_ce"` or `"student_kd"` (any other name is its own label).
        model (`nn.Module`): The model, in its final state.
        dataset: The test split with the model's inputs and `labels` (a [`~datasets.Dataset`] or an in-memory one).
        compute_accuracy (`Callable`): `(predictions, references) -> accuracy in [0, 1]`, e.g. an `evaluate` metric.
        saved_path: The directory the model was saved to (its size on disk is measured).
        output_dir: Where the report is written; the saved path is recorded relative to it.
        train_time_s (`float`, *optional*): The training time, `None` when the model was loaded, not trained.
        teacher_predictions (`np.ndarray`, *optional*): The teacher's predictions, for `agreement_with_teacher`;
            `None` for the teacher itself (agreement 1).
        latency_examples (`int`): Test examples timed one at a time, see [`latency_ms`].
        data_collator (`Callable`, *optional*): Builds a batch from the dataset's rows, e.g. a padding collator for
            tokenized text. Default: `hf_kd.data.collate_batches` (stacks rows; passes an in-memory batch through).
        role (`str`): Whose inputs of the batch the model reads (see [`hf_kd.batch.model_inputs`]): `"student"`, or
            `"teacher"` to score a teacher on its own `teacher_*` inputs.
        latency (`tuple[float, float]`, *optional*): The model's `(latency, iqr)` when it was measured beside the
            others ([`interleaved_latencies_ms`]); measured here, alone, otherwise.

    Returns:
        The [`ModelResult`] and the model's predictions (pass the teacher's to the students).
    """
    references = dataset_labels(dataset)
    predictions, eval_time = predict(model, dataset, batch_size, data_collator, role)
    if latency is None:
        latency = latency_ms(model, dataset, latency_examples, data_collator=data_collator, role=role)
    latency, spread = latency
    agreement = 1.0 if teacher_predictions is None else float(np.mean(predictions == teacher_predictions))
    path = Path(saved_path)
    result = ModelResult(
        name=name,
        label=model_label(name),
        path=os.path.relpath(path, output_dir) if output_dir is not None else str(path),
        parameters=count_parameters(model),
        size_mb=round(directory_size_mb(path), 4),
        train_time_s=None if train_time_s is None else round(float(train_time_s), 2),
        eval_time_s=round(eval_time, 4),
        latency_ms=round(latency, 4),
        accuracy=float(compute_accuracy(predictions, references)),
        agreement_with_teacher=agreement,
        latency_ms_iqr=round(spread, 4),
    )
    return result, predictions
