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

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel
from torch import nn
from transformers.utils import logging

from .. import batch as batch_convention
from ..batch import TEACHER_LOGITS as TEACHER_LOGITS_COLUMN
from ..batch import teacher_feature_column
from ..data import InMemoryDataset
from ..features.names import FeatureCollector, parse_feature
from ..placement import freeze, is_fsdp1, own_class, whole_state
from .loading import (
    TEACHER_LOGITS_DTYPES,
    columns_teacher_reads,
    logits_of,
    run_teacher,
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
    positions' outputs do not change (padded keys get zero attention weight). Left padding is left alone. An ensemble
    member's own inputs (`<k>_input_ids`, see [`hf_kd.batch.member_index`]) are cut by its own `<k>_attention_mask`,
    never by another tokenizer's."""
    trimmed = dict(inputs)
    for mask_name, mask in inputs.items():
        if (
            not mask_name.endswith("attention_mask")
            or not torch.is_tensor(mask)
            or mask.dim() != 2
            or not mask.shape[1]
        ):
            continue
        used, length, owner = mask.any(0).nonzero(), mask.shape[1], batch_convention.member_index(mask_name)
        end = int(used.max()) + 1 if len(used) else length
        if end == length:
            continue
        for name, value in inputs.items():
            same_owner = batch_convention.member_index(name) == owner
            if same_owner and torch.is_tensor(value) and value.dim() >= 2 and value.shape[1] == length:
                trimmed[name] = value[:, :end]
    return trimmed


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
    """The teacher's logits (and the named `features`, when asked), batch by batch, for the precompute: each batch
    split by the batch convention (so the teacher reads its own `teacher_*` inputs when there are any), moved to
    `device`, trimmed of shared padding and run in inference mode, with bf16 autocast when `precision` says so.
    `batch_size=None` measures it (`_probe`). Each batch's outputs come as `{column: tensor}`."""

    def __init__(self, teacher: nn.Module, device: torch.device, out_dtype: torch.dtype, batch_size, precision: str,
                 features: Sequence[str] = ()):  # fmt: skip
        self.teacher, self.device, self.out_dtype, self.precision = teacher, device, out_dtype, precision
        self.batch_size = None if batch_size in (None, AUTO_BATCH_SIZE) else int(batch_size)
        self.candidates = BATCH_SIZE_CANDIDATES.get(device.type, BATCH_SIZE_CANDIDATES["cpu"])
        names = [parse_feature(name) for name in features]
        self.features = [name.text for name in names]
        # Hooks on the model itself (a DeepSpeed engine's module paths would carry its `module.` prefix).
        self.collector = FeatureCollector(extract_model_from_parallel(teacher), names, "teacher") if names else None
        self.columns = [TEACHER_LOGITS_COLUMN, *(teacher_feature_column(i) for i in range(len(self.features)))]

    def __call__(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        inputs = batch_convention.split_batch(batch).inputs_for_teacher()
        inputs = trim_padding({k: v.to(self.device) if torch.is_tensor(v) else v for k, v in inputs.items()})
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bfloat16")
        collecting = self.collector.active() if self.collector is not None else nullcontext()
        with torch.inference_mode(), autocast, collecting:
            outputs = {TEACHER_LOGITS_COLUMN: logits_of(run_teacher(self.teacher, inputs)).float()}
        if self.collector is not None:
            features = self.collector.take()
            for index, name in enumerate(self.features):
                outputs[teacher_feature_column(index)] = _vector_feature(name, features.get(name)).float()
        return outputs, inputs

    def batches(self, order: torch.Tensor, make_batch: Callable) -> Iterator[tuple[torch.Tensor, dict, dict]]:
        """`(indices, outputs, inputs)` for consecutive batches of `order`; while the batch size is unknown, the
        first batches measure it."""
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
        timings, start, slower, unit = {}, len(warm_up), 0, "example"
        for size in self.candidates:
            if timings and start + size * PROBE_BATCHES > PROBE_SHARE * len(order):
                break  # the remaining sizes would be most of the pass: keep the best so far
            seconds = []
            for indices in (order[begin : begin + size] for begin in range(start, start + size * PROBE_BATCHES, size)):
                if len(indices) < size:
                    break
                tick = time.perf_counter()
                outputs, inputs = self(make_batch(indices))
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                seconds.append((time.perf_counter() - tick) / _tokens(inputs))
                unit = "token" if torch.is_tensor(inputs.get("attention_mask")) else "example"
                start += size
                yield indices, outputs, inputs
            if not seconds:
                break  # too few examples left to time this size
            timings[size] = min(seconds)
            slower = slower + 1 if timings[size] > PROBE_SLOWER * min(timings.values()) else 0
            if slower == 2:
                break
        self.batch_size = min(timings, key=timings.get) if timings else self.candidates[0]
        measured = ", ".join(f"{size}: {t * 1e6:.1f} us/{unit}" for size, t in timings.items()) or "too few examples"
        logger.info(
            f"teacher_batch_size='auto': timed the teacher on the first batches on {self.device} ({measured}); "
            f"using teacher_batch_size={self.batch_size}."
        )
        return start


def _vector_feature(name: str, feature: torch.Tensor | None) -> torch.Tensor:
    """A feature to cache: one vector per example `(N, D)`. Maps and token states would take `C*H*W` or `L*D` values
    per example (and token states one length per row); they are computed by the live teacher instead."""
    if feature is None:
        raise ValueError(f"features: the teacher's forward never produced the feature {name!r} (a module it skips?).")
    if feature.dim() != 2:
        raise ValueError(
            f"features: the teacher's feature {name!r} has shape {tuple(feature.shape[1:])} per example; only "
            "vectors (one (D,) per example: a pooled or penultimate feature) are cached with the logits."
        )
    return feature


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
    if batch_size not in (None, AUTO_BATCH_SIZE) and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be an integer >= 1, {AUTO_BATCH_SIZE!r} or None, got {batch_size!r}.")


def add_teacher_logits(
    dataset,
    teacher: nn.Module,
    batch_size: int | str | None = AUTO_BATCH_SIZE,
    dtype: str = "float32",
    data_collator=None,
    device: torch.device | str | None = None,
    precision: str | None = None,
    features: Sequence[str] = (),
):
    """Run the frozen teacher once over `dataset` and return it with a `teacher_logits` column (and, for `features`,
    a `teacher_feature_<i>` column per name).

    The one precompute path of hf_kd ([`DistillationTrainer`] calls it with `precompute_teacher_logits=True`). The
    teacher runs in inference mode over batches of examples of similar length (sorted longest first, padded per
    batch, the original order restored), at a batch size measured on the device (see the module's docstring).

    For a `datasets.Dataset` the result is cached by `datasets`' fingerprinting: the cache key combines the dataset's
    fingerprint, [`teacher_fingerprint`], the storage `dtype`, the `precision` the teacher ran in and the `features`
    cached, so a second run with the same teacher and data reuses the cached columns, a teacher with other weights
    (or other features) never does, and bf16 logits never stand in for float32 ones. The batch size and the
    sorting change nothing but float rounding, so they are not part of the key (a measured batch size may differ
    from one run to the next).

    An [`hf_kd.data.InMemoryDataset`] comes back as an `InMemoryDataset` with the extra columns, sharing the other
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
        features (`list[str]`, *optional*): teacher features to cache in the same pass (names as in
            [`hf_kd.features.names`], e.g. `"hidden_states.3"` or `"bert.pooler"`), stored in `dtype` as
            `teacher_feature_0`, `teacher_feature_1`, ... in this order. Each must be a vector per example `(N, D)`:
            a feature map or token states raise a `ValueError` (they would take `C*H*W` or `L*D` values per example).
    """
    _check_precompute_arguments(dataset, dtype, batch_size)
    freeze(teacher)
    device = torch.device(device) if device is not None else next(iter(teacher.parameters())).device
    precision = precompute_precision(device, precision)
    run = _TeacherLogits(teacher, device, getattr(torch, dtype), batch_size, precision, features)
    columns = columns_teacher_reads(list(dataset.column_names), teacher)
    if isinstance(dataset, InMemoryDataset):
        result = _add_logits_in_memory(dataset, run, columns, dtype, data_collator)
    else:
        result = _add_logits_to_dataset(dataset, run, columns, dtype, data_collator)
    _log_sizes(result, run)
    return result


def _log_sizes(dataset, run: _TeacherLogits) -> None:
    """One line with what the cached outputs take in memory (or on disk): the logits and each feature, in MiB."""
    if isinstance(dataset, InMemoryDataset):
        sizes = [dataset.columns[name].nbytes for name in run.columns]
    else:
        sizes = [dataset.data.column(name).nbytes for name in run.columns]
    names = [TEACHER_LOGITS_COLUMN, *(f"{teacher_feature_column(i)} ({f})" for i, f in enumerate(run.features))]
    listed = ", ".join(f"{name} {size / 2**20:.2f} MiB" for name, size in zip(names, sizes))
    dtype = str(run.out_dtype).removeprefix("torch.")
    logger.info(f"Teacher outputs of {len(dataset)} examples computed once ({dtype}): {listed}.")


def _add_logits_in_memory(dataset: InMemoryDataset, run: _TeacherLogits, columns, dtype, data_collator):
    if dataset.source is not None:
        # Computed on the Arrow dataset it was read from, for the cache across runs; only the new columns are read.
        source = _add_logits_to_dataset(dataset.source, run, columns, dtype, data_collator)
        computed = InMemoryDataset.from_dataset(source, run.columns).columns
        for name in run.columns:
            dataset = dataset.with_column(name, computed[name].to(run.out_dtype))  # torch reads float16 as float32
        return dataset
    # Already tensors of one shape per column: index them, no Arrow round trip and no copy of the inputs.
    values = {name: dataset.columns[name] for name in columns}
    results: dict[str, torch.Tensor] = {}
    for indices, outputs, _ in run.batches(
        _length_order(values, len(dataset)), lambda i: {k: v[i] for k, v in values.items()}
    ):
        for name, output in outputs.items():
            if output.dim() > 2:  # token-level: back to the dataset's padded length (zeros, masked by the losses)
                full = next(v for k, v in values.items() if k.endswith(("input_ids", "attention_mask")))
                output = torch.nn.functional.pad(output, (0, 0, 0, full.shape[1] - output.shape[1]))
            if name not in results:  # created outside inference mode: an ordinary tensor the training can use
                results[name] = torch.zeros(len(dataset), *output.shape[1:], dtype=run.out_dtype)
            results[name][indices] = output.to(run.out_dtype).cpu()
    for name in run.columns:
        dataset = dataset.with_column(name, results[name])
    return dataset


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
        rows, tables = {name: [None] * n for name in run.columns}, {}
        for indices, outputs, inputs in run.batches(_length_order(values, n), lambda i: make_batch(values, i)):
            for name, output in outputs.items():
                output = output.to(run.out_dtype).cpu()
                if output.dim() == 2:  # one row per example (class logits, a vector): straight into the chunk's table
                    if name not in tables:
                        tables[name] = torch.empty(n, output.shape[1], dtype=run.out_dtype)
                    tables[name][indices] = output
                    continue
                if "attention_mask" in inputs:
                    # Token-level logits: keep each row's own length, not the batch's padding.
                    output = [row[:length] for row, length in zip(output, inputs["attention_mask"].sum(-1).tolist())]
                for i, row in zip(indices.tolist(), output):
                    rows[name][i] = row.numpy()
        return {name: tables[name].numpy() if name in tables else rows[name] for name in run.columns}

    original_format = dict(dataset.format)
    key = [dataset._fingerprint, teacher_fingerprint(run.teacher), dtype, columns, run.precision]
    if run.features:  # which features are cached is part of the key (a run without features keeps its old key)
        key.append(run.features)
    result = dataset.with_format("torch").map(
        compute,
        batched=True,
        batch_size=SORT_WINDOW,
        input_columns=columns,
        new_fingerprint=Hasher.hash(key),
        desc="Teacher logits" + (" and features" if run.features else ""),
    )
    format_columns = original_format.get("columns")
    if format_columns is not None:
        format_columns = [*format_columns, *(name for name in run.columns if name not in format_columns)]
    result.set_format(
        type=original_format.get("type"),
        columns=format_columns,
        output_all_columns=original_format.get("output_all_columns", False),
        **original_format.get("format_kwargs", {}),
    )
    return result


def has_transform(dataset) -> bool:
    """True when `dataset` changes its rows on the fly (`set_transform` / `with_transform`): what the teacher sees
    once up front would then differ from what the student trains on."""
    return getattr(dataset, "format", {}).get("type") == "custom"


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
    if carries_logits and augments_on_the_fly(dataset):
        raise ValueError(
            "The train dataset has both a teacher_logits column and an on-the-fly transform (set_transform / "
            "with_transform, e.g. random augmentation): the logits were computed before the transform and would "
            "not match the inputs the student trains on. Drop the transform, or remove the teacher_logits "
            "column and keep the teacher live."
        )


def augments_on_the_fly(dataset) -> bool:
    """True when the transform set on `dataset` may change its rows at random: any transform except one marked
    `augments_inputs=False` (a deterministic decode, [`hf_kd.data.on_the_fly.ImageTransform`] without flips, whose
    stored teacher logits match what the student sees)."""
    if not has_transform(dataset):
        return False
    transform = dataset.format.get("format_kwargs", {}).get("transform")
    return getattr(transform, "augments_inputs", True)


_CONFIG_KEYS_WITHOUT_EFFECT = ("_name_or_path", "architectures", "auto_map", "transformers_version", "dtype", "torch_dtype")


def teacher_fingerprint(teacher: nn.Module) -> str:
    """A hash of everything that decides the teacher's outputs: its class, config and every weight and buffer.

    Part of the cache key of precomputed logits, so that another teacher (or the same one after more training)
    never reuses stale logits."""
    import xxhash

    model = extract_model_from_parallel(teacher)  # a DDP / DeepSpeed wrapper hashes like the model it wraps
    digest = xxhash.xxh64()
    digest.update(own_class(model).__qualname__.encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        # Where the model was loaded from or how it would be saved does not change its outputs: the same teacher
        # reloaded from its directory must find the logits computed before it was saved.
        settings = {k: v for k, v in config.to_dict().items() if k not in _CONFIG_KEYS_WITHOUT_EFFECT}
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in whole_state(teacher if is_fsdp1(teacher) else model):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()
