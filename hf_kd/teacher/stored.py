"""Teacher outputs for data served on the fly: computed once over the (deterministic) transformed examples, stored on
disk as Arrow shards keyed by example position, and read alongside the raw examples.

[`add_teacher_logits`](precompute) holds model-ready inputs in Arrow or memory. Data decoded per batch
([`hf_kd.data.on_the_fly`]) has no such inputs to run the teacher on up front; here the teacher reads the same
DataLoader (workers decode) once, and its logits are written as Arrow stream shards of [`SHARD_ROWS`] rows under a
directory named by a fingerprint: the raw data's (or, for a stream, its description), the transform's (processors,
label mapping), [`teacher_fingerprint`] and the storage dtype. A second run finds the directory and computes nothing;
another teacher, processor or dataset never reads stale logits. A finished directory is renamed into place
atomically, so an interrupted run leaves no half-written cache behind.

The shards are memory-mapped ([`datasets.Dataset.from_file`]), joined to the raw examples column-wise
(`concatenate_datasets(axis=1)`: row `i` is example `i`), and the transform passes `teacher_logits` through, so the
Trainer's sampler (or the stream's order) moves examples and logits together.

Augmentation on the fly changes the inputs at random: stored logits would not match them, and the teacher runs live
instead (measured against stored logits in docs/images-at-scale.md).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset, IterableDataset, concatenate_datasets
from datasets.fingerprint import Hasher
from torch import nn
from transformers import default_data_collator
from transformers.utils import logging

from ..batch import TEACHER_LOGITS, split_batch
from ..placement import freeze
from .loading import logits_of, run_teacher
from .precompute import teacher_fingerprint

logger = logging.get_logger(__name__)

SHARD_ROWS = 10_000  # rows per Arrow shard: ~4 MB of float32 logits for 101 classes
STORED_DIR = "hf_kd_teacher_logits"


def stored_logits_dir(key: list, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the logits of `key` (see the module docstring) are stored: `<cache_dir>/hf_kd_teacher_logits/<hash>`,
    `cache_dir` defaulting to `HF_DATASETS_CACHE`."""
    import datasets

    root = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / STORED_DIR
    return root / Hasher.hash(key)


def _write_shards(loader, teacher: nn.Module, device: torch.device, dtype: str, directory: Path) -> int:
    """Run the teacher over `loader`'s batches in order, writing `teacher_logits` in shards of [`SHARD_ROWS`] rows;
    returns the rows written."""
    value_type = pa.float16() if dtype == "float16" else pa.float32()
    pending, written, shard = [], 0, 0

    def write(logits):
        nonlocal shard
        column = pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1), type=value_type), logits.shape[1])
        table = pa.table({TEACHER_LOGITS: column})
        path = str(directory / f"shard-{shard:05d}.arrow")
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:  # what from_file maps
            writer.write_table(table)
        shard += 1

    for batch in loader:
        inputs = {k: v.to(device) for k, v in split_batch(batch).inputs_for_teacher().items() if torch.is_tensor(v)}
        with torch.inference_mode():
            logits = logits_of(run_teacher(teacher, inputs)).float().to(getattr(torch, dtype)).cpu().numpy()
        pending.append(logits)
        while sum(len(part) for part in pending) >= SHARD_ROWS:
            joined = np.concatenate(pending)
            write(joined[:SHARD_ROWS])
            pending, written = [joined[SHARD_ROWS:]], written + SHARD_ROWS
    rest = np.concatenate(pending) if pending else None
    if rest is not None and len(rest):
        write(rest)
        written += len(rest)
    return written


def store_teacher_logits(
    dataset: Dataset | IterableDataset, teacher: nn.Module, transform, batch_size: int = 64, num_workers: int = 0,
    dtype: str = "float32", cache_dir: str | os.PathLike | None = None, device: torch.device | str | None = None,
    source_key: list | None = None,
) -> Dataset:  # fmt: skip
    """
    The teacher's logits for every example of `dataset` (raw rows; `transform` makes model inputs from them, see
    [`hf_kd.data.on_the_fly.ImageTransform`]), computed once and stored on disk (see the module docstring).

    Returns a memory-mapped [`~datasets.Dataset`] with one `teacher_logits` column, row `i` for example `i`.

    `source_key` identifies the examples of a stream (`IterableDataset`: e.g. its name, configuration, split and
    length limit); a `datasets.Dataset` is identified by its fingerprint and length.

    Raises:
        `ValueError`: when `transform` augments (`augments_inputs`): stored logits would not match the inputs.
    """
    if getattr(transform, "augments_inputs", False):
        raise ValueError(
            "Cannot store teacher logits for data augmented on the fly: they would not match the inputs the student "
            "sees. Keep the teacher live (precompute_teacher_logits=False), or turn the augmentation off."
        )
    if isinstance(dataset, Dataset):
        source_key = [dataset._fingerprint, len(dataset)]
    elif source_key is None:
        raise ValueError("store_teacher_logits: a streamed dataset needs a source_key naming its examples.")
    key = [source_key, transform.fingerprint, teacher_fingerprint(teacher), dtype]
    directory = stored_logits_dir(key, cache_dir)
    if not directory.is_dir():
        freeze(teacher)
        device = torch.device(device) if device is not None else next(iter(teacher.parameters())).device
        if isinstance(dataset, Dataset):
            inputs = dataset.with_transform(transform)
        else:
            inputs = dataset.map(transform, batched=True, remove_columns=list(dataset.column_names or []))
        loader = torch.utils.data.DataLoader(
            inputs, batch_size=batch_size, num_workers=num_workers, collate_fn=default_data_collator
        )
        directory.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=directory.name + ".", dir=directory.parent))
        try:
            rows = _write_shards(loader, teacher, device, dtype, partial)
            os.replace(partial, directory)  # atomic: a reader sees all the shards or none
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        logger.info(f"Teacher logits of {rows} examples stored in {directory}.")
    else:
        logger.info(f"Teacher logits read from {directory} (same data, transform and teacher).")
    shards = sorted(directory.glob("shard-*.arrow"))
    return concatenate_datasets([Dataset.from_file(str(path)) for path in shards])


def with_stored_logits(dataset: Dataset | IterableDataset, logits: Dataset, transform) -> Dataset | IterableDataset:
    """`dataset`'s raw rows joined with their stored `logits` (row by row), served through `transform` (which passes
    `teacher_logits` through)."""
    if isinstance(dataset, Dataset):
        if len(logits) != len(dataset):
            raise ValueError(f"{len(logits)} stored teacher logits for {len(dataset)} examples: not the same data.")
        joined = concatenate_datasets([dataset.with_format(None), logits], axis=1)
        return joined.with_transform(transform)
    joined = concatenate_datasets([dataset, logits.to_iterable_dataset()], axis=1)
    return joined.map(transform, batched=True, remove_columns=list(joined.column_names or []))
