"""Datasets to model inputs: loading from any source ([`loading`]), images prepared once ([`image`]) or per batch
([`on_the_fly`]), text ([`text`]), and serving from memory ([`memory`])."""

from .image import (
    ImageSplits,
    RandomShiftCollator,
    detect_image_columns,
    load_image_classification_dataset,
    load_image_splits,
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
from .on_the_fly import (
    DATA_PATHS,
    ImageTransform,
    OneModelCollator,
    choose_data_path,
    estimate_decoded_bytes,
    is_on_the_fly,
)
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
    "DATA_PATHS",
    "DataCollatorWithTeacherPadding",
    "ImageSplits",
    "ImageTransform",
    "OneModelCollator",
    "choose_data_path",
    "estimate_decoded_bytes",
    "is_on_the_fly",
    "load_image_splits",
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
