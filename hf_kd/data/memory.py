"""Serving prepared data from memory: whole batches as tensor indexing, for loops that read a dataset many times."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from datasets import Dataset


class InMemoryDataset(torch.utils.data.Dataset):
    """
    The columns of a prepared [`~datasets.Dataset`] held as torch tensors, for training loops that read it many times.

    Random access to an Arrow table with the torch format costs ~170 ms per batch of 128 MNIST images (Arrow `take`
    over the cache's record batches, then per-row formatting): over a minute an epoch, ten times the model's own
    time. Reading the columns once, contiguously, takes ~2 s; after that a batch is a tensor index. The memory cost
    is the cache's size (188 MB for MNIST, 614 MB for CIFAR-10, per process).

    The DataLoader fetches through `__getitems__`, which indexes each column once and returns the batch dict itself
    (splitting it into rows for a collator to stack again cost 4x more than the indexing); [`collate_batches`] passes
    such a batch through, and [`DistillationTrainer`] uses it by default. With a plain [`~transformers.Trainer`],
    pass `data_collator=collate_batches` and `remove_unused_columns=False` (its column removal iterates over rows).

    Args:
        columns (`dict[str, torch.Tensor]`): Equal-length tensors, one per column.
        source ([`~datasets.Dataset`], *optional*): The dataset holding exactly these columns, if any (set by
            [`from_dataset`]).
    """

    def __init__(self, columns: dict[str, torch.Tensor], source: Dataset | None = None):
        lengths = {name: len(tensor) for name, tensor in columns.items()}
        if not columns or len(set(lengths.values())) != 1:
            raise ValueError(f"InMemoryDataset needs at least one column, all of the same length; got {lengths}.")
        self.columns = dict(columns)
        # The `datasets.Dataset` these columns were read from (all of them), when there is one: work derived from
        # the data (precomputed teacher logits) is then cached across runs by its fingerprint.
        self.source = source

    @classmethod
    def from_dataset(cls, dataset: Dataset, columns: Sequence[str] | None = None) -> InMemoryDataset:
        """Read `columns` (default: all) of `dataset` into memory as torch tensors, in one contiguous read."""
        columns = list(columns) if columns is not None else dataset.column_names
        missing = [name for name in columns if name not in dataset.column_names]
        if missing:
            raise ValueError(f"Columns {missing} are not in the dataset; its columns are {dataset.column_names}.")
        table = dataset.with_format("torch", columns=columns)[:]
        ragged = [name for name in columns if not torch.is_tensor(table[name])]
        if ragged:
            raise ValueError(
                f"Columns {ragged} hold rows of different shapes and cannot be one tensor: pad them first, or train "
                "on the datasets.Dataset with a padding collator."
            )
        whole = columns == dataset.column_names
        return cls({name: table[name] for name in columns}, source=dataset if whole else None)

    def with_column(self, name: str, values: torch.Tensor) -> InMemoryDataset:
        """A new dataset with one more column (or one replaced), sharing the other columns' memory."""
        return InMemoryDataset({**self.columns, name: values})

    @property
    def column_names(self) -> list[str]:
        return list(self.columns)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: tensor[index] for name, tensor in self.columns.items()}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices)
        return {name: tensor[index] for name, tensor in self.columns.items()}


def collate_batches(features, fallback: Callable | None = None):
    """Collator that passes through a batch already built by [`InMemoryDataset`] (a dict of tensors) and hands a
    list of rows to `fallback` (default: `transformers.default_data_collator`)."""
    if isinstance(features, dict):
        return features
    if fallback is None:
        from transformers import default_data_collator as fallback
    return fallback(features)


def read_column(dataset, name: str):
    """One column of a `datasets.Dataset` or an [`InMemoryDataset`], read whole (a tensor, or an array with one
    array per row when ragged); `None` when it has no such column, or is a plain torch dataset or a stream
    (`datasets.IterableDataset`: no column to read whole)."""
    if name not in (getattr(dataset, "column_names", None) or []) or not isinstance(dataset, (Dataset, InMemoryDataset)):
        return None
    if isinstance(dataset, InMemoryDataset):
        return dataset.columns[name]
    return dataset.with_format("numpy")[name][:]  # a new format: a transform set on the dataset does not run
