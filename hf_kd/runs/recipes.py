"""What each modality prepares for a run: its data (read once), its teacher (loaded, or built to be trained here) and
how to build its student, as a [`hf_kd.experiment.DistillationSetup`].

- [`image_setup`]: images decoded and normalised once and served from memory, or per batch (on the fly, for data that
  does not fit: [`load_image_data`] picks); the teacher is a preset / config trained here (with random shifts) or a
  trained model loaded by path, reading pixel values of its own when its image processor differs from the student's.
- [`text_setup`]: text and label columns detected, each model's tokenization done once; the teacher fine-tuned here
  when its head is new; the student pretrained, or derived from the teacher ([`hf_kd.student.derive_student`]).
  Several teachers ([`text_ensemble_setup`]): each prepared so, each reading its own tokenization.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from accelerate import PartialState
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    set_seed,
)
from transformers.utils import logging

from ..data import (
    DataCollatorWithTeacherPadding,
    ImageTransform,
    InMemoryDataset,
    RandomShiftCollator,
    check_split_labels,
    collate_batches,
    detect_label_column,
    detect_text_columns,
    generic_labels,
    label_mapping,
    label_names,
    load_image_splits,
    load_raw_dataset,
    preprocess_image_dataset,
    same_tokenizer,
    select_split,
    teacher_encoders,
    tokenize_dataset,
)
from ..data.on_the_fly import choose_data_path, estimate_decoded_bytes
from ..models import PRESET_NAMES, image_processor_for_preset, model_from_preset
from ..models.student import derive_student
from ..report.metrics import load_metric
from ..teacher.loading import load_teacher, resolve_init_kwargs
from ..training.configuration_distillation import DistillationConfig
from .arguments import DataArguments, ImageExperimentArguments, TextArguments
from .experiment import TEACHER_DIR, ModelData
from .image_data import model_view, on_the_fly_data, with_teacher_outputs
from .setups import DistillationSetup, TeacherSetup

logger = logging.get_logger(__name__)


# ---------------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------------


def _labels_kwargs(label_names: list[str]) -> dict[str, Any]:
    return {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: index for index, name in enumerate(label_names)},
    }


def build_image_model(name_or_path: str, label_names: list[str], seed: int, pretrained: bool = False) -> PreTrainedModel:
    """A classifier for the dataset's classes: freshly initialised (seeded) from a preset or a config directory, or,
    `pretrained`, a Hub id / directory's weights loaded with its classification head resized to these classes (the
    head's new weights drawn from `seed`)."""
    set_seed(seed)
    if name_or_path in PRESET_NAMES:
        return model_from_preset(name_or_path, **_labels_kwargs(label_names))
    if pretrained:
        labels = {k: v for k, v in _labels_kwargs(label_names).items() if k != "num_labels"}  # set by id2label
        return AutoModelForImageClassification.from_pretrained(name_or_path, ignore_mismatched_sizes=True, **labels)
    config = AutoConfig.from_pretrained(name_or_path, **_labels_kwargs(label_names))
    return AutoModelForImageClassification.from_config(config)


def image_processor_for(name_or_path: str):
    """The image processor of a preset, or the one saved in a model directory (or Hub repository)."""
    if name_or_path in PRESET_NAMES:
        return image_processor_for_preset(name_or_path)
    return AutoImageProcessor.from_pretrained(name_or_path)


def fill_value(image_processor) -> list[float]:
    """The normalised value of a black pixel, per channel, for the border that a shift uncovers."""
    mean = getattr(image_processor, "image_mean", None)
    std = getattr(image_processor, "image_std", None)
    if not getattr(image_processor, "do_normalize", False) or mean is None or std is None:
        return [0.0]
    mean, std = (
        list(mean) if isinstance(mean, (list, tuple)) else [mean],
        list(std) if isinstance(std, (list, tuple)) else [std],
    )
    return [-m / s for m, s in zip(mean, std)]


def teacher_processors(paths: Sequence[str], student_processor) -> dict[int | None, Any]:
    """The loaded teachers whose image processor differs from the student's, by member index (`None` for a lone
    teacher, `k` for ensemble member `k`): each gets its own pixel values, prepared from the same decoded image
    (`teacher_pixel_values`, `teacher_<k>_pixel_values`), as text teachers get their own tokenization. A teacher
    saved without a processor reads the student's inputs."""
    own = {}
    for index, path in enumerate(paths):
        try:
            processor = image_processor_for(path)
        except (OSError, ValueError):  # saved without its processor: it reads the student's inputs
            logger.warning(f"The teacher {path} has no image processor saved: it reads the student's pixel values.")
            continue
        if processor.to_dict() != student_processor.to_dict():
            own[None if len(paths) == 1 else index] = processor
    if own:
        logger.info(f"Teachers with their own image processor ({sorted(own, key=str)}) get their own pixel values.")
    return own


def load_image_teacher(name_or_path: str, student_probe: PreTrainedModel, init_kwargs=None):
    """A trained image teacher, loaded with the Auto class of the student's task (its inputs: see
    [`teacher_processors`])."""
    return load_teacher(name_or_path, student_probe, init_kwargs)


def load_image_data(
    data_args: DataArguments, image_processor, teacher_processors: Mapping[int | None, Any] | None = None,
    seed: int | None = None,
) -> tuple[ModelData, list[str]]:  # fmt: skip
    """The dataset as model inputs, by the path `--data_path` picks (logged): decoded and normalised once and held in
    memory, or decoded per batch ([`hf_kd.runs.image_data.OnTheFlyData`]); and the class names.
    `teacher_processors`: teachers that get pixel values of their own (see [`teacher_processors`])."""
    with PartialState().main_process_first():  # one process fills the datasets cache, the others read it
        splits = load_image_splits(
            data_args.dataset_name, data_args.dataset_config_name, data_args.train_split, data_args.eval_split,
            data_args.image_column, data_args.label_column, data_args.max_train_samples, data_args.max_eval_samples,
            data_args.dataset_cache_dir, streaming=data_args.streaming,
        )  # fmt: skip
    transform = ImageTransform(
        image_processor, splits.image_column, splits.label_column, teacher_processors, splits.label2id,
        random_flip=data_args.random_flip, seed=seed,
    )  # fmt: skip
    path, reason = _data_path(data_args, splits, transform)
    PartialState().print(f"[hf_kd] Image data: {path.replace('_', ' ')} ({reason}).")
    if path == "on_the_fly":
        source = [data_args.dataset_name, data_args.dataset_config_name, data_args.train_split,
                  data_args.max_train_samples]  # fmt: skip
        return on_the_fly_data(splits, transform, image_processor, source_key=source), splits.names
    # Every training reads the training set many times: tensors, read once. InMemoryDataset serves whole batches,
    # which `collate_batches` passes through.
    with PartialState().main_process_first():
        test = _in_memory(splits.eval, "test", splits, image_processor, data_args, teacher_processors)
        train = _in_memory(splits.train, "train", splits, image_processor, data_args, teacher_processors)
    if train is None:  # --max_train_samples 0 (a black-box run taught by its transfer set): no row, the same columns
        train = InMemoryDataset({name: values[:0] for name, values in test.columns.items()})
    return ModelData(train, test, collate_batches, image_processor), splits.names


def _in_memory(split, key: str, splits, image_processor, data_args: DataArguments, teacher_processors):
    """One split decoded and normalised once, as tensors; `None` for an empty one (no image to learn the shapes of
    its tensors from)."""
    if not len(split):
        return None
    processed = preprocess_image_dataset(
        split, image_processor, splits.image_column, splits.label_column, label2id=splits.label2id,
        num_proc=data_args.preprocessing_num_workers, teacher_processors=teacher_processors,
        desc=f"Decoding and normalising the {key} images",
    )  # fmt: skip
    return InMemoryDataset.from_dataset(processed)


def _data_path(data_args: DataArguments, splits, transform: ImageTransform) -> tuple[str, str]:
    """Which path the data takes, and why: a stream or augmentation per batch go on the fly; otherwise the decoded
    size of both splits decides under `auto`."""
    if data_args.streaming:
        return "on_the_fly", "--streaming"
    if data_args.random_flip:
        return "on_the_fly", "--random_flip augments per batch"
    decoded = estimate_decoded_bytes(splits.train, transform) + estimate_decoded_bytes(splits.eval, transform)
    limit = None if data_args.in_memory_limit_gb is None else int(data_args.in_memory_limit_gb * 2**30)
    return choose_data_path(data_args.data_path, decoded, limit)


def image_setup(
    data_args: DataArguments, experiment_args: ImageExperimentArguments, config: DistillationConfig
) -> DistillationSetup:
    """Images: the data by the path `--data_path` picks; the teacher loaded from `config.teacher_model_name_or_path`
    (reading pixel values from its own image processor when it has another) or built from `experiment_args.teacher`
    to be trained here (with random shifts when `teacher_max_shift > 0`). On-the-fly data gets the loaded teacher's
    logits stored once ([`with_teacher_outputs`])."""
    seed, student = config.seed, getattr(experiment_args, "student_source", experiment_args.student)
    pretrained = bool(getattr(experiment_args, "student_model_name_or_path", None))
    image_processor = image_processor_for(student)
    teacher_source = config.teacher_model_name_or_path
    if isinstance(teacher_source, list):
        raise ValueError(
            "image_setup loads one teacher; several (an ensemble) are run by examples/distill_image_classification.py."
        )
    own = teacher_processors([teacher_source], image_processor) if teacher_source else {}
    data, names = load_image_data(data_args, image_processor, own, seed)
    augmentation, teacher_data = None, data
    if teacher_source:
        probe = build_image_model(student, names, seed, pretrained)
        teacher = load_image_teacher(teacher_source, probe, config.teacher_model_init_kwargs)
        teacher_data = model_view(data, None, own.get(None, image_processor))
        data = with_teacher_outputs(data, teacher, config)
    else:
        teacher = build_image_model(experiment_args.teacher, names, seed)
        if experiment_args.teacher_max_shift:
            augmentation = RandomShiftCollator(
                experiment_args.teacher_max_shift, fill=fill_value(image_processor), seed=seed
            )
    return DistillationSetup(
        task="image-classification",
        student_data=data,
        teacher_data=teacher_data,
        teacher=teacher,
        teacher_name=teacher_source or "trained here",
        teacher_needs_training=not teacher_source,
        build_student=lambda teacher: build_image_model(student, names, seed, pretrained),
        teacher_augmentation=augmentation,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------------------------------


def load_text_teacher(
    name_or_path: str, names: Sequence[str], init_kwargs: Mapping[str, Any] | None = None
) -> tuple[PreTrainedModel, dict[str, int], bool]:
    """Load the teacher as a sequence classifier for the dataset's classes.

    Returns the model, the `label -> id` mapping the data must follow, and whether its classification head is new
    (missing from the checkpoint, or resized: a pretrained encoder not yet trained for this task), read off
    `from_pretrained`'s loading info.
    """
    kwargs = resolve_init_kwargs(dict(init_kwargs or {}))
    config = AutoConfig.from_pretrained(name_or_path, **{k: v for k, v in kwargs.items() if k == "revision"})
    try:
        label2id = label_mapping(names, config)  # a fine-tuned teacher's own class order
        head_kwargs = {} if not generic_labels(config.id2label) else None
    except ValueError:
        label2id, head_kwargs = None, None  # trained on other classes: a new head for these ones
        logger.warning(f"The teacher {name_or_path} was trained on other classes; it gets a new classification head.")
    if head_kwargs is None:
        label2id = label2id or {name: i for i, name in enumerate(names)}
        head_kwargs = {
            "num_labels": len(names),
            "id2label": {i: name for name, i in label2id.items()},
            "label2id": dict(label2id),
            "ignore_mismatched_sizes": True,
        }
    model, info = AutoModelForSequenceClassification.from_pretrained(
        name_or_path, output_loading_info=True, **head_kwargs, **kwargs
    )
    head_is_new = bool(info.get("missing_keys")) or bool(info.get("mismatched_keys"))
    return model, label2id, head_is_new


def _optional_f1(name_or_path: str | None, num_labels: int):
    """The F1 metric for two-class tasks, or None (more classes, turned off, or not loadable offline: a warning)."""
    if num_labels != 2 or not name_or_path or name_or_path.lower() == "none":
        return None
    try:
        return load_metric(name_or_path)
    except (FileNotFoundError, OSError) as error:
        logger.warning(f"F1 is skipped: {error} (set --f1_metric_name_or_path to a local module, or 'none').")
        return None


def load_text_splits(data_args: DataArguments):
    """The raw training and test splits, cut to `max_train_samples` / `max_eval_samples`."""
    raw = load_raw_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=data_args.dataset_cache_dir)
    train = select_split(raw, data_args.train_split, "train_split", data_args.dataset_name)
    test = select_split(raw, data_args.eval_split, "eval_split", data_args.dataset_name)
    if data_args.max_train_samples is not None:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    if data_args.max_eval_samples is not None:
        test = test.select(range(min(data_args.max_eval_samples, len(test))))
    return train, test


def text_student_builder(
    text_args: TextArguments, teacher: PreTrainedModel, label2id: dict, seed: int, fine_tuned: bool
):
    """How the text student is built, given the ready teacher: `--student_model_name_or_path`, or derived from the
    teacher with `--student_num_layers` layers. A student derived from the *pretrained* encoder
    (`--student_init_from pretrained`) is taken now, before the run fine-tunes the teacher."""
    layers = text_args.student_num_layers or max(1, teacher.config.num_hidden_layers // 2)
    if (
        not text_args.student_model_name_or_path
        and text_args.init_student_from_teacher
        and text_args.student_init_from == "pretrained"
        and fine_tuned
    ):
        pretrained = derive_student(teacher, layers, text_args.layer_indices)
        return lambda teacher: copy.deepcopy(pretrained)

    def build_student(teacher: PreTrainedModel) -> PreTrainedModel:
        set_seed(seed)
        if text_args.student_model_name_or_path:
            return AutoModelForSequenceClassification.from_pretrained(
                text_args.student_model_name_or_path,
                num_labels=len(label2id),
                id2label={i: n for n, i in label2id.items()},
                label2id=dict(label2id),
                ignore_mismatched_sizes=True,
            )
        return derive_student(teacher, layers, text_args.layer_indices, text_args.init_student_from_teacher)

    return build_student


def _tokenized(tokenizer, label2id, splits, text_columns, label_column, text_args, data_args, teacher_tokenizer=None):
    """The splits tokenized once for a model with `tokenizer` (and `teacher_tokenizer`'s inputs riding along, see
    [`tokenize_dataset`]); one process fills the datasets cache, the others read it."""
    with PartialState().main_process_first():
        return [
            tokenize_dataset(
                split, tokenizer, text_columns, label_column, label2id, max_length=text_args.max_length,
                teacher_tokenizer=teacher_tokenizer, num_proc=data_args.preprocessing_num_workers,
            )
            for split in splits
        ]


def _fine_tune(text_args: TextArguments, head_is_new: bool, source: str) -> bool:
    """Whether the run fine-tunes a teacher first: `--train_teacher yes`, or `auto` and its head is new."""
    fine_tune = text_args.train_teacher == "yes" or (text_args.train_teacher == "auto" and head_is_new)
    if head_is_new and not fine_tune:
        logger.warning(
            f"The classification head of the teacher {source} is new but --train_teacher no: it distils an untrained "
            "head."
        )
    return fine_tune


def text_setup(data_args: DataArguments, text_args: TextArguments, config: DistillationConfig) -> DistillationSetup:
    """Text: the text and label columns detected; the teacher (`config.teacher_model_name_or_path`) loaded as a
    sequence classifier, to be fine-tuned here when its head is new (`--train_teacher auto`); each model's
    tokenization done once; with two tokenizers the student's data carries the teacher's own inputs. Several
    teachers (a list) are prepared by [`text_ensemble_setup`]."""
    train_raw, test_raw = load_text_splits(data_args)
    label_column = detect_label_column(train_raw, data_args.label_column)
    text_columns = detect_text_columns(train_raw, text_args.text_column_names, label_column)
    names = label_names(train_raw, label_column)
    check_split_labels(test_raw, label_column, names, f"eval_split={data_args.eval_split!r}")
    logger.info(f"Text columns {text_columns}, label column {label_column!r}, classes {names}.")
    splits = (train_raw, test_raw)

    def tokenize(tokenizer, label2id, other=None):
        return _tokenized(tokenizer, label2id, splits, text_columns, label_column, text_args, data_args, other)

    source = config.teacher_model_name_or_path
    if isinstance(source, list):
        return text_ensemble_setup(source, names, tokenize, text_args, config)
    set_seed(config.seed)  # a new classification head is initialised at random: the same seed gives the same teacher
    teacher, label2id, head_is_new = load_text_teacher(source, names, config.teacher_model_init_kwargs)
    teacher_tokenizer = AutoTokenizer.from_pretrained(source)
    fine_tune = _fine_tune(text_args, head_is_new, source)

    teacher_data = ModelData(
        *tokenize(teacher_tokenizer, label2id), DataCollatorWithTeacherPadding(teacher_tokenizer), teacher_tokenizer
    )
    student_data = teacher_data
    if text_args.student_model_name_or_path:
        student_tokenizer = AutoTokenizer.from_pretrained(text_args.student_model_name_or_path)
        collator = DataCollatorWithTeacherPadding(student_tokenizer)
        student_data = ModelData(teacher_data.train_dataset, teacher_data.eval_dataset, collator, student_tokenizer)
        if not same_tokenizer(student_tokenizer, teacher_tokenizer):
            logger.info(
                "Teacher and student tokenize differently: the teacher gets its own inputs (teacher_input_ids, ...)."
            )
            collator = DataCollatorWithTeacherPadding(student_tokenizer, teacher_tokenizer)
            student_data = ModelData(
                *tokenize(student_tokenizer, label2id, teacher_tokenizer), collator, student_tokenizer
            )
    f1 = _optional_f1(text_args.f1_metric_name_or_path, len(names))
    return DistillationSetup(
        task="text-classification",
        student_data=student_data,
        teacher_data=teacher_data,
        teacher=teacher,
        teacher_name=source + (" (fine-tuned here)" if fine_tune else ""),
        teacher_needs_training=fine_tune,
        build_student=text_student_builder(text_args, teacher, label2id, config.seed, fine_tune),
        extra_metrics={"F1": f1} if f1 is not None else {},
    )


def text_ensemble_setup(
    sources: Sequence[str], names: Sequence[str], tokenize: Callable, text_args: TextArguments,
    config: DistillationConfig,
) -> DistillationSetup:  # fmt: skip
    """Several text teachers, distilled as one ensemble: each loaded as a sequence classifier (fine-tuned here when
    its head is new, as stage `teacher_<k>`) and measured on its own tokenization. The student is derived from the
    first teacher (or is `--student_model_name_or_path`) and reads its tokenizer; in the student's data, each
    teacher whose tokenizer differs from the student's gets its own `teacher_<k>_*` inputs, the others read the
    student's. `tokenize(tokenizer, label2id, teacher_tokenizers)` tokenizes both splits."""
    teachers, tokenizers, label2ids = [], [], []
    for index, source in enumerate(sources):
        set_seed(config.seed)  # each new head from the run's seed, whatever the teachers before it drew
        model, label2id, head_is_new = load_text_teacher(source, names, config.teacher_model_init_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source)
        fine_tune = _fine_tune(text_args, head_is_new, source)
        data = ModelData(*tokenize(tokenizer, label2id), DataCollatorWithTeacherPadding(tokenizer), tokenizer)
        name = source + (" (fine-tuned here)" if fine_tune else "")
        teachers.append(TeacherSetup(f"{TEACHER_DIR}_{index}", model, data, name, fine_tune))
        tokenizers.append(tokenizer)
        label2ids.append(label2id)
    first = teachers[0]
    student_tokenizer = tokenizers[0]
    if text_args.student_model_name_or_path:
        student_tokenizer = AutoTokenizer.from_pretrained(text_args.student_model_name_or_path)
    own = sorted(k for k in teacher_encoders(student_tokenizer, tokenizers) if k is not None)
    if own:
        logger.info(f"Teachers {own} tokenize differently from the student: each gets its own teacher_<k>_* inputs.")
    collator = DataCollatorWithTeacherPadding(student_tokenizer, tokenizers)
    student_data = ModelData(*tokenize(student_tokenizer, label2ids[0], tokenizers), collator, student_tokenizer)
    f1 = _optional_f1(text_args.f1_metric_name_or_path, len(names))
    return DistillationSetup(
        task="text-classification",
        student_data=student_data,
        teacher_data=first.data,
        teacher=first.model,
        teacher_name=", ".join(teacher.source for teacher in teachers),
        teacher_needs_training=first.train,
        build_student=text_student_builder(text_args, first.model, label2ids[0], config.seed, first.train),
        extra_metrics={"F1": f1} if f1 is not None else {},
        teachers=teachers,
    )
