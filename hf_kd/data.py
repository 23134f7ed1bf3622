"""Datasets to model inputs, prepared once.

Image classification (this section): load a dataset from the Hub, a local directory or memory, find its image and
label columns, and decode + normalise every image ONCE with `Dataset.map` and the model's image processor. The result
is cached by fingerprint (a second run, or the teacher/student/baseline trainings of one run, read the cache) and
served as torch tensors, so no training step ever decodes a PNG.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from datasets import (
    Array3D,
    ClassLabel,
    Dataset,
    DatasetDict,
    Features,
    Image,
    Value,
    load_dataset,
    load_from_disk,
)
from transformers.utils import logging

logger = logging.get_logger(__name__)


# ---------------------------------------------------------------------------------------------------------------------
# Loading (any modality)
# ---------------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------------
# Image classification
# ---------------------------------------------------------------------------------------------------------------------

# Tried in order when a column is not named and no feature type identifies it (the names popular Hub datasets use).
IMAGE_COLUMN_NAMES = ("image", "img", "images", "picture", "pixel_values")
LABEL_COLUMN_NAMES = ("label", "labels", "fine_label", "class", "target", "coarse_label")


def detect_image_columns(
    dataset: Dataset, image_column: str | None = None, label_column: str | None = None
) -> tuple[str, str]:
    """
    Find the image and label columns of an image-classification dataset.

    A column given by name must exist. Otherwise the image column is the one with the [`~datasets.Image`] feature
    (then one of [`IMAGE_COLUMN_NAMES`]), the label column the one with a [`~datasets.ClassLabel`] feature (then one of
    [`LABEL_COLUMN_NAMES`]).

    Raises:
        `ValueError`: naming the argument to set and listing the dataset's columns with their types.
    """
    features = dataset.features
    described = ", ".join(f"{name} ({_describe(feature)})" for name, feature in features.items())

    def pick(given, argument, feature_type, names, what):
        if given is not None:
            if given not in features:
                raise ValueError(f"{argument}={given!r} is not a column of the dataset. Columns: {described}.")
            return given
        typed = [name for name, feature in features.items() if isinstance(feature, feature_type)]
        if len(typed) == 1:
            return typed[0]
        candidates = typed or list(features)
        for name in names:
            if name in candidates:
                return name
        raise ValueError(f"Could not find the {what} column of the dataset: pass {argument}. Columns: {described}.")

    image = pick(image_column, "image_column", Image, IMAGE_COLUMN_NAMES, "image")
    label = pick(label_column, "label_column", ClassLabel, LABEL_COLUMN_NAMES, "label")
    if image == label:
        raise ValueError(f"image_column and label_column are both {image!r}. Columns: {described}.")
    return image, label


def _describe(feature) -> str:
    if isinstance(feature, ClassLabel):
        return f"ClassLabel({feature.num_classes})"
    if isinstance(feature, Value):
        return feature.dtype
    return type(feature).__name__


def label_names(dataset: Dataset, label_column: str) -> list[str]:
    """The class names: a `ClassLabel`'s names, else the sorted distinct values (which must be `0..n-1` integers)."""
    feature = dataset.features[label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    values = sorted(set(dataset[:][label_column]))
    if values != list(range(len(values))):
        shown = values if len(values) <= 20 else values[:20] + ["..."]
        raise ValueError(
            f"The label column {label_column!r} is not a ClassLabel and its values are not the integers 0..n-1 "
            f"(got {shown}): cast it with dataset.class_encode_column({label_column!r})."
        )
    return [str(value) for value in values]


def preprocess_image_dataset(
    dataset: Dataset,
    image_processor: Callable,
    image_column: str,
    label_column: str,
    batch_size: int = 1000,
    num_proc: int | None = None,
    desc: str | None = None,
) -> Dataset:
    """
    Decode and normalise every image of `dataset` once: `pixel_values` (a fixed-shape `float32` `Array3D`) and
    `labels`, served as torch tensors.

    `Dataset.map` caches the result under the dataset's cache directory, keyed by its fingerprint (the dataset, this
    function and the processor's settings), so later runs skip the work. The fixed-shape feature matters: stored as
    nested float lists the MNIST cache weighs 189 MB more in offsets and is slower to read back.
    """
    sample = image_processor(dataset[:1][image_column], return_tensors="np")["pixel_values"]
    shape = tuple(int(d) for d in sample.shape[1:])
    features = Features({"pixel_values": Array3D(shape=shape, dtype="float32"), "labels": Value("int64")})

    def transform(batch: dict[str, list]) -> dict[str, Any]:
        pixel_values = image_processor(batch[image_column], return_tensors="np")["pixel_values"]
        return {"pixel_values": pixel_values, "labels": batch[label_column]}

    processed = dataset.map(
        transform,
        batched=True,
        batch_size=batch_size,
        remove_columns=dataset.column_names,
        features=features,
        num_proc=num_proc,
        desc=desc or "Decoding and normalising images",
    )
    return processed.with_format("torch")


def load_image_classification_dataset(
    dataset_name: str | Dataset | DatasetDict,
    image_processor: Callable,
    dataset_config_name: str | None = None,
    train_split: str = "train",
    eval_split: str = "test",
    image_column: str | None = None,
    label_column: str | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    preprocessing_num_workers: int | None = None,
    cache_dir: str | None = None,
) -> tuple[DatasetDict, list[str]]:
    """
    Load an image-classification dataset and turn it into model inputs once.

    Returns:
        `(datasets, label_names)`: a [`~datasets.DatasetDict`] with `"train"` and `"eval"` splits holding
        `pixel_values` and `labels` (torch format), and the class names in label-id order.

    Example:

    ```python
    >>> from hf_kd.data import load_image_classification_dataset
    >>> from hf_kd.models import image_processor_for_preset
    >>> processor = image_processor_for_preset("mnist-mlp-student")
    >>> data, labels = load_image_classification_dataset("ylecun/mnist", processor)
    >>> data["train"][0]["pixel_values"].shape
    torch.Size([1, 28, 28])
    ```
    """
    raw = load_raw_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)
    train = select_split(raw, train_split, "train_split")
    evaluation = select_split(raw, eval_split, "eval_split")
    image_column, label_column = detect_image_columns(train, image_column, label_column)
    names = label_names(train, label_column)

    splits = {}
    for key, split, limit, argument in (
        ("train", train, max_train_samples, "max_train_samples"),
        ("eval", evaluation, max_eval_samples, "max_eval_samples"),
    ):
        if limit is not None:
            if limit < 1:
                raise ValueError(f"{argument} must be a positive integer, got {limit}.")
            split = split.select(range(min(limit, len(split))))
        splits[key] = preprocess_image_dataset(
            split,
            image_processor,
            image_column,
            label_column,
            num_proc=preprocessing_num_workers,
            desc=f"Decoding and normalising the {key} images",
        )
    return DatasetDict(splits), names


# --- Serving ----------------------------------------------------------------------------------------------------------


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
    """

    def __init__(self, columns: dict[str, torch.Tensor]):
        lengths = {name: len(tensor) for name, tensor in columns.items()}
        if not columns or len(set(lengths.values())) != 1:
            raise ValueError(f"InMemoryDataset needs at least one column, all of the same length; got {lengths}.")
        self.columns = dict(columns)

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
        return cls({name: table[name] for name in columns})

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


# --- Augmentation -----------------------------------------------------------------------------------------------------


class RandomShiftCollator:
    """
    Collate `pixel_values`/`labels` examples into a batch, translating each image by a random number of pixels in
    `[-max_shift, max_shift]` along each axis, the border filled with `fill`.

    This is the jitter Hinton et al. (2015) trained their MNIST teacher with. It runs on the stacked batch tensor (one
    `gather`), so it costs about a millisecond per batch, unlike a `set_transform` over the stored float lists. Use it
    as the *training* collator only: [`~transformers.Trainer`] also collates evaluation batches with its
    `data_collator`.

    Args:
        max_shift (`int`): Largest translation in pixels (`0` turns the augmentation off).
        fill (`float` or `Sequence[float]`, defaults to `0.0`): The value of uncovered pixels, per channel, in the
            normalised space: `-mean / std` is black.
        seed (`int`, *optional*): Seed of the collator's own generator, for reproducible shifts.
    """

    def __init__(self, max_shift: int = 2, fill: float | Sequence[float] = 0.0, seed: int | None = None):
        if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
            raise ValueError(f"max_shift must be an integer >= 0, got {max_shift!r}.")
        self.max_shift = max_shift
        self.fill = fill
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)
        self._index_tables: dict[tuple[int, int], torch.Tensor] = {}

    def _index_table(self, height: int, width: int) -> torch.Tensor:
        # Row k: the flat indices in the padded image of the pixels that make up shift number k.
        key = (height, width)
        if key not in self._index_tables:
            m, padded_width = self.max_shift, width + 2 * self.max_shift
            rows, cols = torch.arange(height)[:, None], torch.arange(width)[None, :]
            self._index_tables[key] = torch.stack(
                [
                    ((rows + dy) * padded_width + cols + dx).reshape(-1)
                    for dy in range(2 * m + 1)
                    for dx in range(2 * m + 1)
                ]
            )
        return self._index_tables[key]

    def shift(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Randomly translate a `(batch, channels, height, width)` tensor."""
        if self.max_shift == 0:
            return pixel_values
        batch, channels, height, width = pixel_values.shape
        m = self.max_shift
        fill = torch.as_tensor(self.fill, dtype=pixel_values.dtype).reshape(-1)
        padded = torch.empty(batch, channels, height + 2 * m, width + 2 * m, dtype=pixel_values.dtype)
        padded[:] = fill.reshape(1, -1, 1, 1) if fill.numel() > 1 else fill
        padded[:, :, m : m + height, m : m + width] = pixel_values
        table = self._index_table(height, width)
        choice = torch.randint(len(table), (batch,), generator=self.generator)
        index = table[choice].unsqueeze(1).expand(batch, channels, -1)
        return padded.flatten(2).gather(2, index).reshape(batch, channels, height, width)

    def __call__(self, examples: list[dict[str, Any]] | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = dict(collate_batches(examples))
        batch["pixel_values"] = self.shift(batch["pixel_values"])
        return batch


def collate_batches(features, fallback: Callable | None = None):
    """Collator that passes through a batch already built by [`InMemoryDataset`] (a dict of tensors) and hands a
    list of rows to `fallback` (default: `transformers.default_data_collator`)."""
    if isinstance(features, dict):
        return features
    if fallback is None:
        from transformers import default_data_collator as fallback
    return fallback(features)
