"""Loading a dataset from any source, picking its splits, and naming its classes (any modality)."""

from __future__ import annotations

import os
from typing import Any

from datasets import (
    ClassLabel,
    Dataset,
    DatasetDict,
    List,
    Value,
    load_dataset,
    load_from_disk,
)

_STRING_DTYPES = ("string", "large_string")


def is_string(feature: Any) -> bool:
    return isinstance(feature, Value) and feature.dtype in _STRING_DTYPES


def _is_saved_to_disk(path: str) -> bool:
    """A directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (which `load_dataset` cannot read)."""
    return os.path.isfile(os.path.join(path, "dataset_dict.json")) or os.path.isfile(os.path.join(path, "state.json"))


def load_raw_dataset(
    dataset: str | Dataset | DatasetDict,
    dataset_config_name: str | None = None,
    cache_dir: str | None = None,
    **load_kwargs: Any,
) -> DatasetDict:
    """
    Load a dataset as a [`~datasets.DatasetDict`], whatever its source.

    Args:
        dataset (`str`, [`~datasets.Dataset`] or [`~datasets.DatasetDict`]):
            A Hub id (`"ylecun/mnist"`), a local directory that `load_dataset` reads (an imagefolder, parquet / csv /
            json files, a dataset repository clone), a directory written by `save_to_disk`, or a dataset object. A
            lone `Dataset` becomes the `"train"` split.
        dataset_config_name (`str`, *optional*): The configuration of a Hub dataset.
        cache_dir (`str`, *optional*): Where `load_dataset` caches (defaults to `HF_DATASETS_CACHE`).
        load_kwargs: Passed to `load_dataset`.
    """
    if isinstance(dataset, DatasetDict):
        return dataset
    if isinstance(dataset, Dataset):
        return DatasetDict({"train": dataset})
    if not isinstance(dataset, str) or not dataset:
        raise ValueError(
            f"dataset_name must be a Hub id, a local directory or a datasets.Dataset/DatasetDict, got {dataset!r}."
        )
    if os.path.isdir(dataset) and _is_saved_to_disk(dataset):
        loaded = load_from_disk(dataset)
    else:
        loaded = load_dataset(dataset, dataset_config_name, cache_dir=cache_dir, **load_kwargs)
    return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})


def select_split(datasets: DatasetDict, split: str, argument: str) -> Dataset:
    """`datasets[split]`, or an error naming the argument and the splits there are."""
    if split not in datasets:
        raise ValueError(f"{argument}={split!r} is not a split of the dataset; its splits are {sorted(datasets)}.")
    return datasets[split]


def generic_labels(id2label: dict | None) -> bool:
    """True for the `LABEL_0, LABEL_1, ...` names a config gets when nobody named the labels."""
    return not id2label or all(str(v) == f"LABEL_{k}" for k, v in id2label.items())


def label_names(dataset: Dataset, label_column: str) -> list[str]:
    """The class names of `label_column`, in label-id order: a `ClassLabel`'s names (or those of a per-token
    `ClassLabel` sequence, for token classification), the sorted distinct strings of a string column, or the
    integers `0..n-1` of an integer column."""
    feature = dataset.features[label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    if isinstance(feature, List) and isinstance(feature.feature, ClassLabel):  # token classification
        return list(feature.feature.names)
    values = sorted(set(dataset[:][label_column]))
    if is_string(feature):
        return values
    if values != list(range(len(values))):
        shown = values if len(values) <= 20 else values[:20] + ["..."]
        raise ValueError(
            f"The label column {label_column!r} is not a ClassLabel and its values are not the integers 0..n-1 "
            f"(got {shown}): cast it with dataset.class_encode_column({label_column!r})."
        )
    return [str(value) for value in values]
