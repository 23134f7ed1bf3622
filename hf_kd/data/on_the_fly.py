"""Images decoded, augmented and normalised per batch, for data too large to hold decoded: the path of transformers'
`run_image_classification.py` (`with_transform` + DataLoader workers), with each model's own image processor.

The in-memory path ([`hf_kd.data.image`]) decodes every image once and holds float32 tensors: ~0.6 MB per 224x224
RGB image, plus transient copies while the split is read (measured ~1.45 MB per image at peak). Here a batch is
decoded from the dataset's stored bytes when the DataLoader asks for it, so memory stays flat in the dataset's size,
at the cost of decoding every image every epoch (which DataLoader workers do in parallel with the training step).

- [`ImageTransform`]: decode -> (random flip) -> the student's processor (`pixel_values`) and each teacher's own
  (`teacher_pixel_values`, or `teacher_<k>_pixel_values` for ensemble member `k`, see [`hf_kd.batch`]) from the same
  decoded image; `labels`; columns the teacher's outputs were stored in (`teacher_logits`) pass through.
- [`estimate_decoded_bytes`] and [`choose_data_path`]: which path a dataset takes (`--data_path auto`).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from datasets import Dataset, IterableDataset

from ..batch import LABELS, is_teacher_target, teacher_column

DATA_PATHS = ("auto", "memory", "on_the_fly")
# --data_path auto keeps a split in memory while its decoded tensors take at most this share of the machine's RAM:
# the in-memory path peaks at ~2.4x the tensors' size (measured, docs/images-at-scale.md), and the run's models,
# optimizer and DataLoader workers need the rest.
IN_MEMORY_SHARE = 0.10


def physical_memory_bytes() -> int:
    """The machine's RAM (Linux `sysconf`; psutil elsewhere)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        import psutil

        return psutil.virtual_memory().total


def _channels(image_processor) -> int | None:
    """How many channels the processor normalises (from its mean), or None when it does not say."""
    mean = getattr(image_processor, "image_mean", None)
    if mean is None or not getattr(image_processor, "do_normalize", True):
        return None
    return len(mean) if isinstance(mean, (list, tuple)) else 1


def images_for(image_processor, images: list) -> list:
    """The decoded images in the mode `image_processor` expects: RGB for a 3-channel processor (a grayscale, CMYK or
    palette image converted, as `run_image_classification.py` does), others as they are."""
    if _channels(image_processor) != 3:
        return images
    return [image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image for image in images]


def processor_fingerprint(image_processor) -> str:
    """What decides a processor's outputs: its class and settings (for cache keys)."""
    from datasets.fingerprint import Hasher

    return Hasher.hash([type(image_processor).__name__, image_processor.to_dict()])


class ImageTransform:
    """
    A `with_transform` / `IterableDataset.map` function: a batch of raw rows (decoded images, labels) to model
    inputs, each model's from the same decoded (and, when `random_flip`, flipped) image.

    Args:
        image_processor: The student's image processor; its output is `pixel_values`.
        image_column (`str`), label_column (`str`): The raw dataset's columns.
        teacher_processors (`dict[int | None, processor]`, *optional*): Teachers that read inputs of their own, by
            member index (`None`: the one teacher, `teacher_pixel_values`; `k`: ensemble member `k`,
            `teacher_<k>_pixel_values`).
        label2id (`dict`, *optional*): Maps string labels to ids (class names in label-id order).
        random_flip (`bool`): Flip each image left-right with probability 0.5 (training augmentation).
        seed (`int`, *optional*): Seed of the flips; each DataLoader worker draws from `seed + worker id`.
    """

    def __init__(
        self, image_processor, image_column: str, label_column: str | None,
        teacher_processors: Mapping[int | None, Any] | None = None, label2id: Mapping[str, int] | None = None,
        random_flip: bool = False, seed: int | None = None,
    ):  # fmt: skip
        self.image_processor = image_processor
        self.image_column, self.label_column = image_column, label_column
        self.teacher_processors = dict(teacher_processors or {})
        self.label2id = dict(label2id) if label2id else None
        self.random_flip, self.seed = random_flip, seed
        self._rng: random.Random | None = None
        self._rng_worker: int | None = None

    @property
    def augments_inputs(self) -> bool:
        """True when the inputs change at random: teacher outputs stored once would not match them (hf_kd's marker,
        as on [`~hf_kd.data.RandomShiftCollator`])."""
        return self.random_flip

    @property
    def recipe(self) -> dict[str, Any]:
        return {"random_flip": True} if self.random_flip else {}

    def without_teachers(self) -> ImageTransform:
        """The same transform for the student alone (a baseline trains on it without computing teacher inputs)."""
        return ImageTransform(
            self.image_processor, self.image_column, self.label_column, None, self.label2id, self.random_flip, self.seed
        )

    def deterministic(self) -> ImageTransform:
        """The same transform without augmentation (what stored teacher outputs are computed on)."""
        return ImageTransform(
            self.image_processor, self.image_column, self.label_column, self.teacher_processors, self.label2id
        )

    @property
    def fingerprint(self) -> str:
        """A hash of what decides the outputs: columns, processors, label mapping and augmentation."""
        from datasets.fingerprint import Hasher

        processors = {str(k): processor_fingerprint(p) for k, p in self.teacher_processors.items()}
        return Hasher.hash([
            self.image_column, self.label_column, processor_fingerprint(self.image_processor), processors,
            self.label2id, self.random_flip,
        ])  # fmt: skip

    def _generator(self) -> random.Random:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else -1
        if self._rng is None or self._rng_worker != worker:  # each worker its own stream, not copies of one
            self._rng, self._rng_worker = random.Random(None if self.seed is None else self.seed + worker + 1), worker
        return self._rng

    def _flipped(self, images: list) -> list:
        if not self.random_flip:
            return images
        from PIL import Image

        rng = self._generator()
        return [image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image for image in images]

    def labels_of(self, dataset: Dataset) -> torch.Tensor:
        """The `labels` this transform gives the rows of `dataset`, read off its label column (no image decoded)."""
        values = dataset.with_format(None)[self.label_column]
        return torch.as_tensor([self.label2id[v] for v in values] if self.label2id else list(values))

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        images = self._flipped(list(batch[self.image_column]))
        out: dict[str, Any] = {
            "pixel_values": pixel_values(self.image_processor, images),
        }
        for member, processor in self.teacher_processors.items():
            out[teacher_column("pixel_values", member)] = pixel_values(processor, images)
        if self.label_column is not None and self.label_column in batch:
            labels = batch[self.label_column]
            out[LABELS] = torch.as_tensor([self.label2id[v] for v in labels] if self.label2id else labels)
        for name, values in batch.items():  # stored teacher outputs ride along
            if is_teacher_target(name):
                out[name] = torch.as_tensor(np.asarray(values, dtype=np.float32))
        return out


def pixel_values(image_processor, images: list) -> torch.Tensor:
    """`image_processor`'s float32 `pixel_values` for decoded images (converted to its mode first)."""
    return torch.as_tensor(image_processor(images_for(image_processor, images), return_tensors="pt")["pixel_values"])


def is_on_the_fly(dataset) -> bool:
    """True for data whose rows are made when read: a `datasets.Dataset` with a transform, or an `IterableDataset`
    (the Trainer must then keep every column: its column removal would drop the image before the transform)."""
    return isinstance(dataset, IterableDataset) or (
        isinstance(dataset, Dataset) and dataset.format.get("type") == "custom"
    )


def estimate_decoded_bytes(dataset: Dataset, transform: Callable[[dict], dict], probe: int = 4) -> int:
    """The memory the in-memory path would hold for `dataset`: the tensors `transform` makes for its first `probe`
    rows, scaled to its length (images of one dataset are resized to one size by the processors)."""
    if len(dataset) == 0:
        return 0
    sample = transform(dataset.with_format(None)[: min(probe, len(dataset))])
    rows = len(next(iter(sample.values())))
    per_row = sum(torch.as_tensor(value).element_size() * torch.as_tensor(value).numel() for value in sample.values())
    return int(per_row / rows * len(dataset))


def choose_data_path(requested: str, decoded_bytes: int | None, limit_bytes: int | None = None) -> tuple[str, str]:
    """`(path, reason)`: `"memory"` or `"on_the_fly"`. `auto` keeps a dataset in memory when its decoded tensors take
    at most `limit_bytes` (default: [`IN_MEMORY_SHARE`] of the machine's RAM); data of unknown size (streamed) goes
    on the fly."""
    if requested not in DATA_PATHS:
        raise ValueError(f"data_path must be one of {DATA_PATHS}, got {requested!r}.")
    limit = limit_bytes if limit_bytes is not None else int(IN_MEMORY_SHARE * physical_memory_bytes())
    size = "unknown (streamed)" if decoded_bytes is None else f"{decoded_bytes / 2**30:.2f} GiB"
    if requested != "auto":
        return requested, f"--data_path {requested} (decoded size {size})"
    if decoded_bytes is not None and decoded_bytes <= limit:
        return "memory", f"decoded size {size} <= {limit / 2**30:.2f} GiB in-memory limit"
    return "on_the_fly", f"decoded size {size} > {limit / 2**30:.2f} GiB in-memory limit"


STUDENT = "student"


class OneModelCollator:
    """Batches for one model alone, cut from batches that carry several models' inputs: the student's (`member=
    "student"`: every `teacher_*` key dropped), or a teacher's (`member=None`: `teacher_<name>` -> `<name>`; `k`:
    ensemble member `k`'s `teacher_<k>_<name>` -> `<name>`, or the shared inputs when it has none of its own). For
    training a baseline or measuring one teacher on data prepared for a distillation."""

    def __init__(self, collator: Callable, member: int | str | None = STUDENT):
        self.collator, self.member = collator, member

    def __call__(self, features):
        from ..batch import member_inputs, split_batch

        batch = split_batch(self.collator(features))
        labels = {LABELS: batch.labels} if batch.labels is not None else {}
        if self.member == STUDENT:
            return {**batch.student_inputs, **labels}
        if self.member is None:
            return {**(batch.teacher_inputs or batch.student_inputs), **labels}
        own = member_inputs(batch.teacher_inputs, self.member)  # its own, else the teachers' shared ones
        return {**(own or batch.student_inputs), **labels}
