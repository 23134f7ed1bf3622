"""Teacher outputs computed once, at the speed the hardware allows: [`add_teacher_logits`], hf_kd's one precompute
path ([`DistillationTrainer`] calls it with `precompute_teacher_logits=True`).

What makes it fast, each measured with the real all-MiniLM-L6-v2 teacher on 1,280 Rotten Tomatoes reviews (README,
"Speed"):

- inference mode, not just `no_grad` (no version counters, no autograd bookkeeping);
- token sequences sorted by length and padded per batch (reviews padded to 64 tokens average 27 real ones), the
  original order restored after; a batch cut from pre-padded tensors drops the positions that are padding in every
  row. Neither changes a value beyond float rounding: padded keys get zero attention weight;
- a batch size measured on the device, not guessed (`batch_size="auto"`): the first batches try a few sizes and
  the fastest per token is kept and logged. A cache-bound CPU is slower at 512 than at 32;
- bf16 autocast only where it is faster and its logits match (a CUDA GPU with bf16); on a CPU without native bf16
  it is several times slower, so float32 there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from . import batch as batch_convention
from .batch import TEACHER_LOGITS as TEACHER_LOGITS_COLUMN
from .data import InMemoryDataset
from .teacher import (
    TEACHER_LOGITS_DTYPES,
    freeze,
    has_transform,
    logits_of,
    teacher_fingerprint,
    teacher_input_columns,
    teacher_outputs,
)

logger = logging.get_logger(__name__)

AUTO_BATCH_SIZE = "auto"
# Candidate batch sizes, smallest first. A CPU's best is small (cache-bound: the MiniLM teacher is 1.5x slower per
# example at 512 than at 32); a GPU's is large. Probing stops after two sizes in a row clearly slower than the best
# so far (one slow batch on a shared machine is noise, two are a trend).
BATCH_SIZE_CANDIDATES = {"cpu": (16, 32, 64, 128, 256, 512), "cuda": (64, 128, 256, 512, 1024)}
PROBE_BATCHES = 3  # timed batches per candidate; the fastest counts (a shared machine's noise only slows)
PROBE_SHARE = 0.25  # the probe covers at most this share of the examples: on a small dataset it tries fewer sizes
PROBE_SLOWER = 1.15  # this much slower per token than the best counts as slower
SORT_WINDOW = 8192  # rows sorted by length together: one `datasets.map` batch
PRECOMPUTE_PRECISIONS = ("float32", "bfloat16")


def precompute_precision(device: torch.device, precision: str | None = None) -> str:
    """The precision the teacher runs in for the precompute: `precision` when given, else bf16 autocast on a CUDA
    GPU that supports it and float32 elsewhere (a CPU without native bf16 runs MiniLM 5x slower in bf16)."""
    if precision is None:
        return "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if precision not in PRECOMPUTE_PRECISIONS:
        raise ValueError(f"precision must be one of {PRECOMPUTE_PRECISIONS} or None, got {precision!r}.")
    return precision


def trim_padding(inputs: dict[str, Any]) -> dict[str, Any]:
    """Drop the trailing positions that are padding in every row (right padding), from every tensor of the
    sequence's length: a batch of short sequences cut from pre-padded tensors then costs its own length. The kept
    positions' outputs do not change (padded keys get zero attention weight). Left padding is left alone."""
    mask = inputs.get("attention_mask")
    if not torch.is_tensor(mask) or mask.dim() != 2 or mask.shape[1] == 0:
        return inputs
    used = mask.any(0).nonzero()
    length, end = mask.shape[1], int(used.max()) + 1 if len(used) else mask.shape[1]
    if end == length:
        return inputs
    return {k: v[:, :end] if torch.is_tensor(v) and v.dim() >= 2 and v.shape[1] == length else v for k, v in inputs.items()}


def example_lengths(values: dict[str, Any]) -> torch.Tensor | None:
    """Each example's token count, read from the teacher's attention mask (or its input ids when it has no mask),
    for sorting; `None` for inputs without tokens (pixels, features) or all of one length."""
    for suffix in ("attention_mask", "input_ids"):
        name = next((n for n in values if n.endswith(suffix)), None)
        if name is None:
            continue
        column = values[name]
        if torch.is_tensor(column):
            return column.sum(-1) if suffix == "attention_mask" and column.dim() == 2 else None
        return torch.tensor([int(torch.as_tensor(r).sum()) if suffix == "attention_mask" else len(r) for r in column])
    return None


class _TeacherLogits:
    """The teacher's logits, batch by batch, for the precompute: each batch split by the batch convention (so the
    teacher reads its own `teacher_*` inputs when there are any), moved to `device`, trimmed of shared padding and
    run in inference mode, with bf16 autocast when `precision` says so. `batch_size=None` measures it (`_probe`)."""

    def __init__(self, teacher: nn.Module, device: torch.device, out_dtype: torch.dtype, batch_size, precision: str):
        self.teacher, self.device, self.out_dtype, self.precision = teacher, device, out_dtype, precision
        self.batch_size = None if batch_size in (None, AUTO_BATCH_SIZE) else int(batch_size)
        self.candidates = BATCH_SIZE_CANDIDATES.get(device.type, BATCH_SIZE_CANDIDATES["cpu"])

    def __call__(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        inputs = batch_convention.split_batch(batch).inputs_for_teacher()
        inputs = trim_padding({k: v.to(self.device) if torch.is_tensor(v) else v for k, v in inputs.items()})
        autocast = self.precision == "bfloat16"
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = logits_of(teacher_outputs(self.teacher, inputs)).float()
        return logits, inputs

    def batches(self, order: torch.Tensor, make_batch: Callable) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
        """`(indices, logits, inputs)` for consecutive batches of `order`; while the batch size is unknown, the first
        batches measure it."""
        start = 0
        if len(order) == 0:
            return
        if self.batch_size is None:
            start = yield from self._probe(order, make_batch)
        for begin in range(start, len(order), self.batch_size):
            indices = order[begin : begin + self.batch_size]
            yield (indices, *self(make_batch(indices)))

    def _probe(self, order: torch.Tensor, make_batch: Callable):
        """Run the first batches at each candidate size (smallest first), timing the teacher per token; keep the
        fastest, log the timings, and return where the pass resumes. No work is wasted: the probe's batches are part
        of the pass."""
        warm_up = order[: self.candidates[0]]  # untimed: the first forward pays one-time costs (allocations, kernels)
        yield (warm_up, *self(make_batch(warm_up)))
        timings, start, slower = {}, len(warm_up), 0
        for size in self.candidates:
            if timings and start + size * PROBE_BATCHES > PROBE_SHARE * len(order):
                break  # the remaining sizes would be most of the pass: keep the best so far
            seconds = []
            for indices in (order[begin : begin + size] for begin in range(start, start + size * PROBE_BATCHES, size)):
                if len(indices) < size:
                    break
                tick = time.perf_counter()
                logits, inputs = self(make_batch(indices))
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                seconds.append((time.perf_counter() - tick) / _tokens(inputs))
                start += size
                yield indices, logits, inputs
            if not seconds:
                break  # too few examples left to time this size
            timings[size] = min(seconds)
            slower = slower + 1 if timings[size] > PROBE_SLOWER * min(timings.values()) else 0
            if slower == 2:
                break
        self.batch_size = min(timings, key=timings.get) if timings else self.candidates[0]
        measured = ", ".join(f"{size}: {t * 1e6:.1f} us/token" for size, t in timings.items()) or "too few examples"
        logger.info(
            f"teacher_batch_size='auto': timed the teacher on the first batches on {self.device} ({measured}); "
            f"using teacher_batch_size={self.batch_size}."
        )
        return start


def _tokens(inputs: dict[str, Any]) -> int:
    """The work in a batch: its padded token count when it has an attention mask, else its example count."""
    mask = inputs.get("attention_mask")
    if torch.is_tensor(mask):
        return max(mask.numel(), 1)
    return max(len(next(v for v in inputs.values() if torch.is_tensor(v))), 1)


def _length_order(values: dict[str, Any], n: int) -> torch.Tensor:
    """Longest first (a GPU that fits the first batch fits them all); the original order when there is no length."""
    lengths = example_lengths(values)
    if lengths is None:
        return torch.arange(n)
    return torch.argsort(lengths, descending=True, stable=True)


def _check_precompute_arguments(dataset, dtype: str, batch_size) -> None:
    if has_transform(dataset):
        raise ValueError(
            "Cannot precompute teacher logits: the dataset has an on-the-fly transform (set_transform / "
            "with_transform). Logits computed once would not match the inputs the student sees when the transform "
            "is random (augmentation). Apply deterministic preprocessing with Dataset.map instead, or keep the "
            "teacher live (precompute_teacher_logits=False)."
        )
    if dtype not in TEACHER_LOGITS_DTYPES:
        raise ValueError(f"dtype must be one of {TEACHER_LOGITS_DTYPES}, got {dtype!r}.")
    if batch_size not in (None, AUTO_BATCH_SIZE) and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                                      or batch_size < 1):
        raise ValueError(f"batch_size must be an integer >= 1, {AUTO_BATCH_SIZE!r} or None, got {batch_size!r}.")


def add_teacher_logits(
    dataset,
    teacher: nn.Module,
    batch_size: int | str | None = AUTO_BATCH_SIZE,
    dtype: str = "float32",
    data_collator=None,
    device: torch.device | str | None = None,
    precision: str | None = None,
):
    """Run the frozen teacher once over `dataset` and return it with a `teacher_logits` column.

    The one precompute path of hf_kd ([`DistillationTrainer`] calls it with `precompute_teacher_logits=True`). The
    teacher runs in inference mode over batches of examples of similar length (sorted longest first, padded per
    batch, the original order restored), at a batch size measured on the device (see the module's docstring).

    For a `datasets.Dataset` the result is cached by `datasets`' fingerprinting: the cache key combines the dataset's
    fingerprint, [`teacher_fingerprint`], the storage `dtype` and the `precision` the teacher ran in, so a second
    run with the same teacher and data reuses the cached column, a teacher with other weights never does, and bf16
    logits never stand in for float32 ones. The batch size and the sorting change nothing but float rounding, so
    they are not part of the key (a measured batch size may differ from one run to the next).

    An [`hf_kd.data.InMemoryDataset`] comes back as an `InMemoryDataset` with the extra column, sharing the other
    columns' memory. When it was read from a `datasets.Dataset` (`InMemoryDataset.from_dataset`), the logits are
    computed on that dataset, so they are cached across runs too; otherwise they are computed from its tensors
    and live in memory only.

    Args:
        dataset (`datasets.Dataset` or [`~hf_kd.data.InMemoryDataset`]): model-ready inputs (decoded pixels, token
            ids), no on-the-fly transform.
        teacher (`nn.Module`): the teacher; it reads its own `teacher_*` columns when there are any.
        batch_size (`int` or `"auto"`): inference batch size; `"auto"` (or `None`) times a few sizes on the first
            batches and keeps the fastest per token (logged).
        dtype (`str`): storage precision of the column, `"float32"` or `"float16"` (half the disk and memory; the
            losses upcast to float32).
        data_collator (*optional*): builds a batch from a list of rows (with their column names as in the dataset),
            e.g. the training collator that pads the student's and the teacher's tokens. Batches whose columns are
            already stacked tensors are used as they are.
        device (*optional*): where to run the teacher; defaults to the device of its parameters.
        precision (`str`, *optional*): `"bfloat16"` (autocast) or `"float32"`; default: bfloat16 on a CUDA GPU that
            supports it, float32 elsewhere.
    """
    _check_precompute_arguments(dataset, dtype, batch_size)
    freeze(teacher)
    device = torch.device(device) if device is not None else next(iter(teacher.parameters())).device
    run = _TeacherLogits(teacher, device, getattr(torch, dtype), batch_size, precompute_precision(device, precision))
    columns = teacher_input_columns(list(dataset.column_names), teacher)
    if isinstance(dataset, InMemoryDataset):
        return _add_logits_in_memory(dataset, run, columns, dtype, data_collator)
    return _add_logits_to_dataset(dataset, run, columns, dtype, data_collator)


def _add_logits_in_memory(dataset: InMemoryDataset, run: _TeacherLogits, columns, dtype, data_collator):
    if dataset.source is not None:
        # Computed on the Arrow dataset it was read from, for the cache across runs; only the new column is read.
        source = _add_logits_to_dataset(dataset.source, run, columns, dtype, data_collator)
        logits = InMemoryDataset.from_dataset(source, [TEACHER_LOGITS_COLUMN]).columns[TEACHER_LOGITS_COLUMN]
        logits = logits.to(run.out_dtype)  # the torch format reads float16 back as float32
        return dataset.with_column(TEACHER_LOGITS_COLUMN, logits)
    # Already tensors of one shape per column: index them, no Arrow round trip and no copy of the inputs.
    values = {name: dataset.columns[name] for name in columns}
    result = None
    for indices, logits, _ in run.batches(_length_order(values, len(dataset)), lambda i: {k: v[i] for k, v in values.items()}):
        if logits.dim() > 2:  # token-level: back to the dataset's padded length (zeros, masked by the losses)
            full = next(v for k, v in values.items() if k.endswith("input_ids") or k.endswith("attention_mask"))
            logits = torch.nn.functional.pad(logits, (0, 0, 0, full.shape[1] - logits.shape[1]))
        if result is None:  # created outside inference mode: an ordinary tensor the training can use
            result = torch.zeros(len(dataset), *logits.shape[1:], dtype=run.out_dtype)
        result[indices] = logits.to(run.out_dtype).cpu()
    return dataset.with_column(TEACHER_LOGITS_COLUMN, result)


def _add_logits_to_dataset(dataset, run: _TeacherLogits, columns, dtype, data_collator):
    from datasets.fingerprint import Hasher
    from transformers import default_data_collator

    collate = data_collator or default_data_collator

    def make_batch(values: dict[str, Any], indices: torch.Tensor) -> dict[str, Any]:
        if all(torch.is_tensor(v) for v in values.values()):
            return {k: v[indices] for k, v in values.items()}  # already stacked by the torch format
        return collate([{k: values[k][i] for k in columns} for i in indices.tolist()])

    def compute(*chunk):
        values = dict(zip(columns, chunk))
        n = len(chunk[0])
        rows, table = [None] * n, None
        for indices, logits, inputs in run.batches(_length_order(values, n), lambda i: make_batch(values, i)):
            logits = logits.to(run.out_dtype).cpu()
            if logits.dim() == 2:  # one row of class logits per example: straight into the chunk's table
                table = torch.empty(n, logits.shape[1], dtype=run.out_dtype) if table is None else table
                table[indices] = logits
                continue
            if "attention_mask" in inputs:
                # Token-level logits: keep each row's own length, not the batch's padding.
                logits = [row[:length] for row, length in zip(logits, inputs["attention_mask"].sum(-1).tolist())]
            for i, row in zip(indices.tolist(), logits):
                rows[i] = row.numpy()
        return {TEACHER_LOGITS_COLUMN: table.numpy() if table is not None else rows}

    original_format = dict(dataset.format)
    key = [dataset._fingerprint, teacher_fingerprint(run.teacher), dtype, columns, run.precision]
    result = dataset.with_format("torch").map(
        compute,
        batched=True,
        batch_size=SORT_WINDOW,
        input_columns=columns,
        new_fingerprint=Hasher.hash(key),
        desc="Teacher logits",
    )
    format_columns = original_format.get("columns")
    if format_columns is not None and TEACHER_LOGITS_COLUMN not in format_columns:
        format_columns = [*format_columns, TEACHER_LOGITS_COLUMN]
    result.set_format(
        type=original_format.get("type"),
        columns=format_columns,
        output_all_columns=original_format.get("output_all_columns", False),
        **original_format.get("format_kwargs", {}),
    )
    return result
