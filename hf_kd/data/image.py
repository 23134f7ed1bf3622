"""Image classification data: find the image and label columns, and decode + normalise every image ONCE with
`Dataset.map` and the model's image processor. The result is cached by fingerprint (a second run, or the
teacher/student/baseline trainings of one run, read the cache) and served as torch tensors, so no training step ever
decodes a PNG."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from datasets import (
    Array3D,
    ClassLabel,
    Dataset,
    DatasetDict,
    Features,
    Image,
    IterableDataset,
    Value,
)

from .loading import (
    check_split_labels,
    is_string,
    label_names,
    load_raw_dataset,
    select_split,
)
from .memory import collate_batches
from .on_the_fly import ImageTransform

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


def preprocess_image_dataset(
    dataset: Dataset,
    image_processor: Callable,
    image_column: str,
    label_column: str,
    batch_size: int = 1000,
    num_proc: int | None = None,
    desc: str | None = None,
    label2id: dict[str, int] | None = None,
    teacher_processors: Mapping[int | None, Callable] | None = None,
) -> Dataset:
    """
    Decode and normalise every image of `dataset` once: `pixel_values` (a fixed-shape `float32` `Array3D`) and
    `labels`, served as torch tensors. With `teacher_processors` (by member index, see
    [`hf_kd.data.on_the_fly.ImageTransform`]), each teacher's own `teacher_pixel_values` /
    `teacher_<k>_pixel_values` from the same decoded image.

    `Dataset.map` caches the result under the dataset's cache directory, keyed by its fingerprint (the dataset, this
    function and the processors' settings), so later runs skip the work. The fixed-shape feature matters: stored as
    nested float lists the MNIST cache weighs 189 MB more in offsets and is slower to read back.
    """
    transform = ImageTransform(image_processor, image_column, label_column, teacher_processors, label2id)
    sample = transform(dataset[:1])
    features = Features({
        name: Array3D(shape=tuple(value.shape[1:]), dtype="float32") if name != "labels" else Value("int64")
        for name, value in sample.items()
    })  # fmt: skip

    def decode(batch: dict[str, list]) -> dict[str, Any]:
        return {name: value.numpy() for name, value in transform(batch).items()}

    processed = dataset.map(
        decode,
        batched=True,
        batch_size=batch_size,
        remove_columns=dataset.column_names,
        features=features,
        num_proc=num_proc,
        desc=desc or "Decoding and normalising images",
    )
    return processed.with_format("torch")


@dataclass
class ImageSplits:
    """The raw training and test splits of an image-classification dataset (images still encoded), their columns,
    class names (in label-id order) and, for string labels, the `label -> id` mapping."""

    train: Dataset | IterableDataset
    eval: Dataset | IterableDataset
    image_column: str
    label_column: str
    names: list[str]
    label2id: dict[str, int] | None


def load_image_splits(
    dataset_name: str | Dataset | DatasetDict,
    dataset_config_name: str | None = None,
    train_split: str = "train",
    eval_split: str = "test",
    image_column: str | None = None,
    label_column: str | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    cache_dir: str | None = None,
    streaming: bool = False,
) -> ImageSplits:
    """Load the two splits (cut to `max_*_samples`), find their image and label columns and name the classes.

    `streaming=True` (a Hub dataset too big to download whole): the training split is a `datasets.IterableDataset`
    read shard by shard as training goes; the test split, read by every evaluation and the report, is downloaded (its
    first `max_eval_samples` examples) into a `datasets.Dataset`."""
    if streaming:
        return _streamed_splits(
            dataset_name, dataset_config_name, train_split, eval_split, image_column, label_column,
            max_train_samples, max_eval_samples, cache_dir,
        )  # fmt: skip
    raw = load_raw_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)
    name = dataset_name if isinstance(dataset_name, str) else None
    train = select_split(raw, train_split, "train_split", name)
    evaluation = select_split(raw, eval_split, "eval_split", name)
    image_column, label_column = detect_image_columns(train, image_column, label_column)
    names = label_names(train, label_column)
    check_split_labels(evaluation, label_column, names, f"eval_split={eval_split!r}")
    # String labels are encoded here, in the order of `names`, instead of asking for `class_encode_column`.
    label2id = {name: i for i, name in enumerate(names)} if is_string(train.features[label_column]) else None
    # 0 training images is a black-box run taught by its transfer set alone (the arguments allow it only there).
    train = _limited(train, max_train_samples, "max_train_samples", minimum=0)
    evaluation = _limited(evaluation, max_eval_samples, "max_eval_samples")
    return ImageSplits(train, evaluation, image_column, label_column, names, label2id)


def _streamed_splits(
    dataset_name, dataset_config_name, train_split, eval_split, image_column, label_column, max_train_samples,
    max_eval_samples, cache_dir,
) -> ImageSplits:  # fmt: skip
    from datasets import load_dataset

    if not isinstance(dataset_name, str):
        raise TypeError("streaming=True reads a dataset by name (a Hub id or a local directory), not an object.")

    def stream(split: str) -> IterableDataset:
        loaded = load_dataset(dataset_name, dataset_config_name, split=split, streaming=True, cache_dir=cache_dir)
        return loaded if loaded.features is not None else loaded._resolve_features()

    train, evaluation = stream(train_split), stream(eval_split)
    image_column, label_column = detect_image_columns(train, image_column, label_column)
    if is_string(train.features[label_column]):
        raise ValueError(
            f"streaming=True needs class ids (a ClassLabel or integer label column); {label_column!r} holds strings, "
            "whose classes cannot be listed without reading the whole split. Load it without streaming."
        )
    names = label_names(train, label_column) if isinstance(train.features[label_column], ClassLabel) else None
    if names is None:
        raise ValueError(f"streaming=True needs a ClassLabel label column to name the classes; {label_column!r} is not.")
    if max_train_samples is not None:
        train = train.take(max_train_samples)
    if max_eval_samples is not None:
        evaluation = evaluation.take(max_eval_samples)
    features = evaluation.features
    evaluation = Dataset.from_generator(_rows, gen_kwargs={"dataset": evaluation}, features=features)
    return ImageSplits(train, evaluation, image_column, label_column, names, None)


def _rows(dataset):
    yield from dataset


def _limited(split: Dataset, limit: int | None, argument: str, minimum: int = 1) -> Dataset:
    if limit is None:
        return split
    if limit < minimum:
        raise ValueError(f"{argument} must be an integer >= {minimum}, got {limit}.")
    return split.select(range(min(limit, len(split))))


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
    teacher_processors: Mapping[int | None, Callable] | None = None,
) -> tuple[DatasetDict, list[str]]:
    """
    Load an image-classification dataset and turn it into model inputs once.

    Returns:
        `(datasets, label_names)`: a [`~datasets.DatasetDict`] with `"train"` and `"eval"` splits holding
        `pixel_values` and `labels` (torch format), and the class names in label-id order. With
        `teacher_processors`, each teacher's own pixel values too (see [`preprocess_image_dataset`]).

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
    splits = load_image_splits(
        dataset_name, dataset_config_name, train_split, eval_split, image_column, label_column, max_train_samples,
        max_eval_samples, cache_dir,
    )  # fmt: skip
    processed = {
        key: preprocess_image_dataset(
            split,
            image_processor,
            splits.image_column,
            splits.label_column,
            num_proc=preprocessing_num_workers,
            desc=f"Decoding and normalising the {key} images",
            label2id=splits.label2id,
            teacher_processors=teacher_processors,
        )
        for key, split in (("train", splits.train), ("eval", splits.eval))
    }
    return DatasetDict(processed), splits.names


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

    @property
    def augments_inputs(self) -> bool:
        """True when it changes the inputs at random (hf_kd's marker for any collator that augments): teacher logits
        computed once up front would then not match what the student sees."""
        return self.max_shift > 0

    @property
    def recipe(self) -> dict[str, int]:
        """The augmentation as a training recipe records it (the report and the model card)."""
        return {"max_shift": self.max_shift}

    def __call__(self, examples: list[dict[str, Any]] | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = dict(collate_batches(examples))
        batch["pixel_values"] = self.shift(batch["pixel_values"])
        return batch
