"""Datasets to model inputs, prepared once: loading from any source ([`loading`]), images ([`image`]), text
([`text`]), and serving from memory ([`memory`])."""

from .image import (
    RandomShiftCollator,
    detect_image_columns,
    load_image_classification_dataset,
    preprocess_image_dataset,
)
from .loading import (
    check_dataset_labels,
    check_label_range,
    check_not_empty,
    check_split_labels,
    generic_labels,
    label_names,
    load_raw_dataset,
    select_split,
)
from .memory import InMemoryDataset, collate_batches, read_column
from .text import (
    DataCollatorWithTeacherPadding,
    detect_label_column,
    detect_text_columns,
    label_mapping,
    same_tokenizer,
    teacher_encoders,
    tokenize_dataset,
)

__all__ = [
    "DataCollatorWithTeacherPadding",
    "InMemoryDataset",
    "RandomShiftCollator",
    "check_dataset_labels",
    "check_label_range",
    "check_not_empty",
    "check_split_labels",
    "collate_batches",
    "detect_image_columns",
    "detect_label_column",
    "detect_text_columns",
    "generic_labels",
    "label_mapping",
    "label_names",
    "load_image_classification_dataset",
    "load_raw_dataset",
    "preprocess_image_dataset",
    "read_column",
    "same_tokenizer",
    "select_split",
    "teacher_encoders",
    "tokenize_dataset",
]
