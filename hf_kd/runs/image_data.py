"""Image data served on the fly in a run: the datasets with their transforms, the teacher's outputs stored once (or
the teacher live under augmentation), and views of one run's data for one model (the baseline, a teacher measured
alone).

[`hf_kd.runs.recipes.load_image_data`] picks the path (memory or on the fly); this module holds what the on-the-fly
path needs around the trainings.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from accelerate import PartialState
from datasets import Dataset, IterableDataset

from ..batch import is_teacher_input
from ..data import (
    ImageSplits,
    ImageTransform,
    InMemoryDataset,
    OneModelCollator,
    collate_batches,
)
from ..data.on_the_fly import STUDENT
from ..teacher.stored import store_teacher_logits, with_stored_logits
from ..training.configuration_distillation import DistillationConfig
from .experiment import ModelData


@dataclass
class OnTheFlyData(ModelData):
    """[`ModelData`] decoded per batch: also the raw training split and its transform (to store the teacher's outputs
    once, or to serve a model alone), and what names a stream's examples (`source_key`, for the stored outputs'
    cache key)."""

    raw_train: Any = None
    transform: ImageTransform | None = None
    source_key: list | None = None


def on_the_fly_data(splits: ImageSplits, transform: ImageTransform, image_processor, source_key=None) -> OnTheFlyData:
    """The splits served through `transform` (the test split without augmentation): `with_transform` for a
    `datasets.Dataset`, a lazy `map` for a stream. Rows come out as tensors, stacked by the default collator."""
    return OnTheFlyData(
        _served(splits.train, transform),
        _served(splits.eval, transform.deterministic()),
        collate_batches,
        image_processor,
        raw_train=splits.train,
        transform=transform,
        source_key=source_key,
    )


def _served(dataset, transform: ImageTransform):
    if isinstance(dataset, IterableDataset):
        return dataset.map(transform, batched=True, remove_columns=list(dataset.column_names or []))
    return dataset.with_transform(transform)


def with_teacher_outputs(data: ModelData, teacher, config: DistillationConfig) -> ModelData:
    """The data a student is distilled on: for data on the fly, the teacher's logits stored once and read alongside
    (`--precompute_teacher_logits`), or, when the transform augments, the teacher live (the flag turned off, and
    said). In-memory data is returned as it is (the trainer precomputes on it)."""
    if not isinstance(data, OnTheFlyData):
        return data
    if data.transform.augments_inputs or not config.precompute_teacher_logits:
        if config.precompute_teacher_logits:
            PartialState().print(
                "[hf_kd] Teacher live: the training images are augmented on the fly (--random_flip), so logits "
                "stored once would not match them."
            )
            config.precompute_teacher_logits = False
        return data
    batch_size = config.teacher_batch_size if isinstance(config.teacher_batch_size, int) else 64
    with PartialState().main_process_first():
        logits = store_teacher_logits(
            data.raw_train, teacher, data.transform, batch_size=batch_size,
            num_workers=config.dataloader_num_workers, dtype=config.teacher_logits_dtype, source_key=data.source_key,
        )  # fmt: skip
    # Training reads the stored logits instead of the teacher: the student's pixel values alone are decoded.
    served = with_stored_logits(data.raw_train, logits, data.transform.without_teachers())
    return dataclasses.replace(data, train_dataset=served)


def model_view(data: ModelData, member: int | str | None = STUDENT, processing_class: Any = None) -> ModelData:
    """`data` for one model alone: the student's inputs (`member="student"`, for the baseline), or a teacher's own
    (`None`, or ensemble member `k`) renamed to its `pixel_values`, with that model's processor. In-memory columns
    are dropped or renamed; a transform serving the student alone skips the teachers' processors."""
    processing_class = processing_class if processing_class is not None else data.processing_class
    if isinstance(data, OnTheFlyData) and member == STUDENT and isinstance(data.raw_train, Dataset):
        only = data.transform.without_teachers()
        view = on_the_fly_data(_Splits(data.raw_train, data.eval_dataset.with_format(None)), only, processing_class)
        return view
    if isinstance(data.train_dataset, InMemoryDataset) and member == STUDENT:
        train, test = (_student_columns(d) for d in (data.train_dataset, data.eval_dataset))
        return ModelData(train, test, data.data_collator, processing_class)
    collator = OneModelCollator(data.data_collator or collate_batches, member)
    return ModelData(data.train_dataset, data.eval_dataset, collator, processing_class)


@dataclass
class _Splits:
    train: Any
    eval: Any


def _student_columns(dataset: InMemoryDataset) -> InMemoryDataset:
    return InMemoryDataset({k: v for k, v in dataset.columns.items() if not is_teacher_input(k)})


def has_teacher_inputs(data: ModelData) -> bool:
    """True when the data carries inputs of a teacher's own (`teacher_pixel_values`, ...)."""
    transform = getattr(data, "transform", None)
    if transform is not None:
        return bool(transform.teacher_processors)
    columns = getattr(data.train_dataset, "column_names", None) or []
    return any(is_teacher_input(name) for name in columns)


def check_on_the_fly_run(data: ModelData, data_args, config: DistillationConfig, experiment_args) -> None:
    """What a run on the fly needs: a step count for a stream (the Trainer cannot count the epochs of data without a
    length: from --max_train_samples when given), no assistant chain (each link would need its own stored logits) and
    no teacher over HTTP (its answers are joined to the training data held in memory)."""
    if not isinstance(data, OnTheFlyData):
        return
    for flag, value in (("--assistants", experiment_args.assistants), ("--teacher_url", experiment_args.teacher_url)):
        if value:
            raise ValueError(f"{flag} runs on data held in memory: pass --data_path memory (or drop {flag}).")
    if isinstance(data.train_dataset, IterableDataset) and config.max_steps <= 0:
        if data_args.max_train_samples is None:
            raise ValueError(
                "--streaming: the stream has no length for the Trainer to count epochs; set --max_steps, or "
                "--max_train_samples (the steps are then counted from it and --num_train_epochs)."
            )
        per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps * config.world_size
        config.max_steps = max(1, math.ceil(data_args.max_train_samples / per_step * config.num_train_epochs))
        PartialState().print(f"[hf_kd] Streaming: --max_steps {config.max_steps} from --max_train_samples.")
