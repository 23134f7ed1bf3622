"""Loading a dataset from any source, picking its splits, and naming its classes (any modality)."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
from datasets import (
    ClassLabel,
    Dataset,
    DatasetDict,
    Features,
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


def _load_saved(path: str) -> Dataset | DatasetDict:
    """`load_from_disk`, except that a split saved with no rows loads as an empty dataset (`load_from_disk` fails
    on it with a bare `IndexError`), so that the split's own check names it."""
    try:
        return load_from_disk(path)
    except IndexError:
        dict_file = os.path.join(path, "dataset_dict.json")
        if not os.path.isfile(dict_file):
            raise
        with open(dict_file) as f:
            splits = json.load(f)["splits"]
        return DatasetDict({split: _load_saved_split(os.path.join(path, split)) for split in splits})


def _load_saved_split(path: str) -> Dataset:
    with open(os.path.join(path, "state.json")) as f:
        if json.load(f)["_data_files"]:
            return load_from_disk(path)
    with open(os.path.join(path, "dataset_info.json")) as f:
        features = Features.from_dict(json.load(f)["features"])
    return Dataset.from_dict({name: [] for name in features}, features=features)


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
        loaded = _load_saved(dataset)
    else:
        loaded = load_dataset(dataset, dataset_config_name, cache_dir=cache_dir, **load_kwargs)
    return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})


def select_split(datasets: DatasetDict, split: str, argument: str, dataset_name: Any = None) -> Dataset:
    """`datasets[split]`, or an error naming the argument and the splits there are (or saying it is empty)."""
    if split not in datasets:
        raise ValueError(f"{argument}={split!r} is not a split of the dataset; its splits are {sorted(datasets)}.")
    check_not_empty(datasets[split], f"{argument}={split!r}", dataset_name)
    return datasets[split]


def check_split_labels(dataset: Dataset, label_column: str, names: list[str], argument: str) -> None:
    """Refuse a split (e.g. the test split) whose labels are not among `names`, the training split's classes: an
    integer outside `[0, len(names))`, or a string that is not one of them."""
    feature = dataset.features[label_column]
    if isinstance(feature, ClassLabel) and feature.num_classes == len(names):
        return  # ids in range by construction
    values = dataset.with_format("numpy")[label_column][:]
    if is_string(feature):
        unknown = sorted(set(values.tolist()) - set(names))
        if unknown:
            raise ValueError(
                f"{argument}: its {label_column!r} column holds {unknown[:5]}, which are not classes of the training "
                f"split {names}: every split must use the training split's classes."
            )
        return
    check_label_range(values, len(names), argument, label_column)


def check_label_range(labels, num_labels: int, where: str, column: str = "labels") -> None:
    """Refuse class ids outside `[0, num_labels)` (the ignore index -100 of token labels aside), naming `where` (a
    split or an argument), the column, the first offending value and the range. Float labels (regression,
    multi-label targets) are not class ids and pass. `labels`: an array or tensor, or one array per row."""
    values = labels.numpy() if torch.is_tensor(labels) else np.asarray(labels)
    if values.dtype == object:  # ragged per-token labels
        values = np.concatenate([np.asarray(row).reshape(-1) for row in values]) if len(values) else values
    values = values.reshape(-1)
    if values.size == 0 or not np.issubdtype(values.dtype, np.integer):
        return
    bad = values[(values != -100) & ((values < 0) | (values >= num_labels))]
    if bad.size:
        raise ValueError(
            f"{where}: its {column!r} column holds class id {bad[0]} ({bad.size} value(s) in all), outside [0, "
            f"{num_labels}), the classes of the model (num_labels={num_labels}): every split must use the training "
            "split's classes."
        )


def check_dataset_labels(named_datasets: list[tuple[str, Any]], num_labels: int) -> None:
    """[`check_label_range`] on the `labels` (or `label`) column of each `(name, dataset)`, read once; plain torch
    datasets, which have no columns to read, are skipped (their batches are checked as they come)."""
    from .memory import read_column

    for name, dataset in named_datasets:
        for column in ("labels", "label"):  # the Trainer's default collator renames `label` to `labels`
            values = read_column(dataset, column)
            if values is not None:
                check_label_range(values, num_labels, name, column)


def check_not_empty(dataset, argument: str, dataset_name: Any = None) -> None:
    """Refuse a split with no rows, naming it and the dataset (the dependencies' errors would name neither)."""
    if len(dataset) == 0:
        of = f" of the dataset {dataset_name}" if dataset_name is not None else ""
        raise ValueError(f"{argument}{of} has no rows: give a split with examples.")


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
