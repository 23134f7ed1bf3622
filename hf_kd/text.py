"""Text classification for distillation: columns, tokenization (once, for both models), padding, and students.

The pieces a text run needs that the image path does not:

- [`detect_text_columns`] / [`detect_label_column`]: which columns hold the text (one, or a sentence pair) and
  the label, read off the dataset's features.
- [`tokenize_dataset`]: tokenizes once up front with `Dataset.map` (cached by fingerprint). When the teacher has
  its own tokenizer, the teacher's encoding of the same text rides along as `teacher_input_ids`,
  `teacher_attention_mask`, ... which [`~hf_kd.DistillationTrainer`] feeds to the teacher with the prefix removed.
- [`DataCollatorWithTeacherPadding`]: dynamic padding of the student's inputs *and* the teacher's
  (`DataCollatorWithPadding` only pads the keys its tokenizer knows, and with one pad id), and of token-level labels.
- [`derive_student`]: a student built from the teacher's own config with fewer layers, initialised from a subset
  of the teacher's layers plus everything that is not a layer (embeddings, pooler, head), as DistilBERT was.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import ClassLabel, Dataset, List, Value
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging

from .losses import IGNORE_INDEX
from .data import label_names as class_label_names
from .trainer import TEACHER_INPUT_PREFIX, TEACHER_LOGITS_COLUMN, generic_labels

logger = logging.get_logger(__name__)

# Column names used by the common text-classification datasets (GLUE, SuperGLUE, IMDB, Rotten Tomatoes, SNLI...),
# pairs first: a dataset with `question` and `sentence` is a pair task, not a single-sentence one.
TEXT_COLUMN_PAIRS: tuple[tuple[str, str], ...] = (
    ("sentence1", "sentence2"),
    ("premise", "hypothesis"),
    ("question1", "question2"),
    ("question", "sentence"),
    ("question", "passage"),
    ("sentence_a", "sentence_b"),
    ("text_a", "text_b"),
)
TEXT_COLUMNS: tuple[str, ...] = ("text", "sentence", "review", "content", "document")
LABEL_COLUMNS: tuple[str, ...] = ("label", "labels")
_STRING_DTYPES = ("string", "large_string")


def _is_string(feature: Any) -> bool:
    return isinstance(feature, Value) and feature.dtype in _STRING_DTYPES


def detect_label_column(dataset: Dataset, label_column_name: str | None = None) -> str:
    """The label column: `label_column_name` when given, else `label` / `labels`, else the only `ClassLabel` one."""
    columns = dataset.column_names
    if label_column_name is not None:
        if label_column_name not in columns:
            raise ValueError(f"label_column_name={label_column_name!r} is not a column of the dataset ({columns}).")
        return label_column_name
    for name in LABEL_COLUMNS:
        if name in columns:
            return name
    class_labels = [name for name, feature in dataset.features.items() if isinstance(feature, ClassLabel)]
    if len(class_labels) == 1:
        return class_labels[0]
    raise ValueError(
        f"Cannot tell which column holds the labels (columns: {columns}): pass label_column_name (--label_column_name)."
    )


def detect_text_columns(
    dataset: Dataset, text_column_names: Sequence[str] | str | None = None, label_column: str | None = None
) -> tuple[str, ...]:
    """The one or two text columns (a single sentence, or a sentence pair), in the order the tokenizer takes them.

    `text_column_names` (a sequence, or a comma-separated string as on the command line) wins; otherwise a known
    pair (`sentence1`/`sentence2`, `premise`/`hypothesis`, ...), then a known single column (`text`, `sentence`,
    ...), then the string columns other than the label when there are one or two of them.
    """
    columns = dataset.column_names
    if text_column_names is not None:
        names = (
            tuple(n.strip() for n in text_column_names.split(","))
            if isinstance(text_column_names, str)
            else tuple(text_column_names)
        )
        missing = [n for n in names if n not in columns]
        if not 1 <= len(names) <= 2 or missing:
            raise ValueError(
                f"text_column_names must name one or two columns of the dataset ({columns}), got {list(names)}"
                + (f" ({missing} not found)." if missing else ".")
            )
        return names
    for pair in TEXT_COLUMN_PAIRS:
        if all(name in columns for name in pair):
            return pair
    for name in TEXT_COLUMNS:
        if name in columns and name != label_column:
            return (name,)
    strings = tuple(n for n, f in dataset.features.items() if _is_string(f) and n != label_column)
    if 1 <= len(strings) <= 2:
        return strings
    raise ValueError(
        f"Cannot tell which columns hold the text (string columns: {list(strings)}, all columns: {columns}): pass "
        "text_column_names (--text_column_names), one column or two comma-separated for sentence pairs."
    )


def label_names(dataset: Dataset, label_column: str) -> list[str]:
    """The class names, as [`hf_kd.data.label_names`] reads them (a `ClassLabel`'s names, or integers `0..n-1`), plus
    what text datasets also use: string labels (sorted) and per-token `ClassLabel` sequences (token classification)."""
    feature = dataset.features[label_column]
    if isinstance(feature, List) and isinstance(feature.feature, ClassLabel):  # token classification
        return list(feature.feature.names)
    if _is_string(feature):
        return sorted(set(dataset[:][label_column]))
    return class_label_names(dataset, label_column)


def label_mapping(names: Sequence[str], config: PretrainedConfig | None = None) -> dict[str, int]:
    """`label -> id` for the dataset's class `names`, in the model's order when the model already names these classes.

    A fine-tuned teacher may order the same classes differently from the dataset (as in transformers' `run_glue`):
    its `label2id` then wins. A model whose label names differ from the dataset's is refused, since its head would
    be trained against the wrong classes.
    """
    id2label = {int(k): v for k, v in (getattr(config, "id2label", None) or {}).items()}
    if config is None or generic_labels(id2label):
        return {name: i for i, name in enumerate(names)}
    model_ids = {str(v).lower(): k for k, v in id2label.items()}
    if sorted(model_ids) != sorted(n.lower() for n in names):
        raise ValueError(
            f"The model names its classes {[id2label[i] for i in sorted(id2label)]} but the dataset's are "
            f"{list(names)}: use a model trained on these classes, or one with a new classification head."
        )
    return {name: model_ids[name.lower()] for name in names}


def same_tokenizer(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    """True when the two tokenizers encode text identically (same vocabulary, same normalisation and specials).

    Checked on the vocabulary, then on the serialised `tokenizers` pipeline when both have one, else on a probe pair
    with casing, accents and punctuation (the cased/uncased and accent-stripping variants of one vocabulary).
    """
    if a is b:
        return True
    if type(a) is not type(b) or a.get_vocab() != b.get_vocab():
        return False
    backend_a, backend_b = getattr(a, "backend_tokenizer", None), getattr(b, "backend_tokenizer", None)
    if backend_a is not None and backend_b is not None:
        # The whole pipeline: normaliser, pre-tokenizer, model, post-processor (special tokens).
        return backend_a.to_str() == backend_b.to_str()
    probe = ("Héllo WORLD, it's naïve: 1,234 -- Ünïcode!", "a SECOND sentence.")
    return dict(a(*probe)) == dict(b(*probe))


def tokenize_dataset(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    text_columns: Sequence[str],
    label_column: str | None = None,
    label2id: Mapping[str, int] | None = None,
    max_length: int | None = None,
    teacher_tokenizer: PreTrainedTokenizerBase | None = None,
    teacher_max_length: int | None = None,
    num_proc: int | None = None,
) -> Dataset:
    """Tokenize once, up front (`Dataset.map`, cached by fingerprint), without padding: the collator pads per batch.

    Returns a dataset with the student's inputs (`input_ids`, `attention_mask`, ...), `labels` (class ids, mapped
    through `label2id` from the names of [`label_names`] when given), and, when `teacher_tokenizer` encodes
    differently from `tokenizer`, the teacher's inputs as `teacher_input_ids`, `teacher_attention_mask`, ...
    Every other column is dropped.
    """
    if not 1 <= len(text_columns) <= 2:
        raise ValueError(f"text_columns must name one or two columns, got {list(text_columns)}.")
    if teacher_tokenizer is not None and same_tokenizer(tokenizer, teacher_tokenizer):
        teacher_tokenizer = None  # one encoding serves both models
    feature = dataset.features[label_column] if label_column is not None else None
    # Class ids stored as a ClassLabel are turned into names only to be mapped into the model's order.
    id_to_name = feature.int2str if isinstance(feature, ClassLabel) and label2id is not None else None

    def to_id(value):
        if label2id is None:
            return value
        key = id_to_name(value) if id_to_name is not None else str(value)
        if key not in label2id:
            raise ValueError(f"Label {value!r} of column {label_column!r} is not one of {sorted(label2id)}.")
        return label2id[key]

    def encode(batch: dict[str, list]) -> dict[str, list]:
        texts = [batch[c] for c in text_columns]
        encoded = dict(tokenizer(*texts, truncation=True, max_length=max_length))
        if teacher_tokenizer is not None:
            teacher = teacher_tokenizer(*texts, truncation=True, max_length=teacher_max_length or max_length)
            encoded.update({TEACHER_INPUT_PREFIX + k: v for k, v in teacher.items()})
        if label_column is not None:
            encoded["labels"] = [to_id(v) for v in batch[label_column]]
        return encoded

    return dataset.map(
        encode,
        batched=True,
        remove_columns=dataset.column_names,
        num_proc=num_proc,
        desc="Tokenizing" + (" for student and teacher" if teacher_tokenizer is not None else ""),
    )


@dataclass
class DataCollatorWithTeacherPadding:
    """Pads a batch of tokenized examples for distillation: the student's inputs with `tokenizer`, the
    `teacher_*` inputs with `teacher_tokenizer` (its own pad id and padding side), each to its own longest sequence.

    `labels` are class ids (sequence classification) or per-token ids padded with `label_pad_token_id`
    (token classification); per-token `teacher_logits` are padded with zeros, positions the loss masks anyway.

    Args:
        tokenizer: the student's tokenizer.
        teacher_tokenizer: the teacher's, when it differs; defaults to `tokenizer`.
        padding, max_length, pad_to_multiple_of: as for [`~transformers.DataCollatorWithPadding`], for both models.
        label_pad_token_id: the label of padded positions in token classification (ignored by the losses).
    """

    tokenizer: PreTrainedTokenizerBase
    teacher_tokenizer: PreTrainedTokenizerBase | None = None
    padding: bool | str = True
    max_length: int | None = None
    pad_to_multiple_of: int | None = None
    label_pad_token_id: int = IGNORE_INDEX
    return_tensors: str = "pt"

    def _pad(self, tokenizer: PreTrainedTokenizerBase, features: list[dict]) -> dict[str, torch.Tensor]:
        return dict(
            tokenizer.pad(
                features,
                padding=self.padding,
                max_length=self.max_length,
                pad_to_multiple_of=self.pad_to_multiple_of,
                return_tensors="pt",
            )
        )

    def __call__(self, features: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if self.return_tensors != "pt":
            raise ValueError(
                f"DataCollatorWithTeacherPadding returns PyTorch tensors only, got {self.return_tensors!r}."
            )
        student, teacher = [], []
        labels, teacher_logits = [], []
        for feature in features:
            s, t = {}, {}
            for key, value in feature.items():
                if key in ("label", "labels", "label_ids"):
                    labels.append(value)
                elif key == TEACHER_LOGITS_COLUMN:
                    teacher_logits.append(torch.as_tensor(value))
                elif key.startswith(TEACHER_INPUT_PREFIX):
                    t[key[len(TEACHER_INPUT_PREFIX) :]] = value
                else:
                    s[key] = value
            student.append(s)
            teacher.append(t)

        batch = self._pad(self.tokenizer, student)
        if any(teacher):
            padded = self._pad(self.teacher_tokenizer or self.tokenizer, teacher)
            batch.update({TEACHER_INPUT_PREFIX + k: v for k, v in padded.items()})
        length = batch["input_ids"].shape[1] if "input_ids" in batch else None
        if labels:
            batch["labels"] = self._pad_positions(labels, length, self.label_pad_token_id, dtype=torch.long)
        if teacher_logits:
            batch[TEACHER_LOGITS_COLUMN] = self._pad_positions(teacher_logits, length, 0.0, dtype=torch.float32)
        return batch

    def _pad_positions(self, values: list, length: int | None, pad_value: float, dtype: torch.dtype) -> torch.Tensor:
        """Stack per-example values; per-token ones (a first dimension over positions) padded to `length`, on the
        tokenizer's padding side so that they stay aligned with the input ids."""
        tensors = [torch.as_tensor(v, dtype=dtype) for v in values]
        per_token = tensors[0].dim() >= (1 if dtype == torch.long else 2)
        if not per_token:
            return torch.stack(tensors)
        length = length or max(t.shape[0] for t in tensors)
        left = self.tokenizer.padding_side == "left"
        out = torch.full((len(tensors), length, *tensors[0].shape[1:]), pad_value, dtype=dtype)
        for i, t in enumerate(tensors):
            t = t[:length]
            if left:
                out[i, length - t.shape[0] :] = t
            else:
                out[i, : t.shape[0]] = t
        return out


def _layer_list(model: nn.Module, num_layers: int) -> str:
    """The qualified name of the model's stack of `num_layers` blocks (`bert.encoder.layer`, `distilbert.transformer.layer`...)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return name
    raise ValueError(
        f"Cannot find the stack of {num_layers} layers in {type(model).__name__} (no nn.ModuleList of that length): "
        "pass a student model instead of deriving one."
    )


def spread_layers(num_teacher_layers: int, num_layers: int) -> list[int]:
    """Teacher layers to copy into a `num_layers` student: evenly spread from the first to the last.

    For 12 -> 6 this is DistilBERT's own choice `[0, 2, 4, 7, 9, 11]`, for 6 -> 2 `[0, 5]`; a one-layer student
    takes the first layer, whose input (the embeddings) it keeps.
    """
    if num_layers == 1:
        return [0]
    return [round(i * (num_teacher_layers - 1) / (num_layers - 1)) for i in range(num_layers)]


def derive_student(
    teacher: PreTrainedModel,
    num_layers: int,
    layer_indices: Sequence[int] | None = None,
    init_from_teacher: bool = True,
) -> PreTrainedModel:
    """A student of the teacher's own class and config, with `num_layers` transformer layers.

    With `init_from_teacher` (DistilBERT's recipe), student layer `i` starts as teacher layer `layer_indices[i]`
    (default [`spread_layers`]) and every weight outside the layer stack (embeddings, pooler, classification head) is
    copied; otherwise the student is randomly initialised. The teacher is not modified.
    """
    config = copy.deepcopy(teacher.config)
    teacher_layers = config.num_hidden_layers  # `attribute_map` resolves this for n_layers / num_layers configs
    if not isinstance(num_layers, int) or not 1 <= num_layers <= teacher_layers:
        raise ValueError(
            f"num_layers must be an int in [1, {teacher_layers}] (the teacher's layers), got {num_layers!r}."
        )
    if layer_indices is None:
        layer_indices = spread_layers(teacher_layers, num_layers)
    layer_indices = [int(i) for i in layer_indices]
    if len(layer_indices) != num_layers or any(not 0 <= i < teacher_layers for i in layer_indices):
        raise ValueError(
            f"layer_indices must give {num_layers} teacher layers in [0, {teacher_layers - 1}], got {layer_indices}."
        )
    config.num_hidden_layers = num_layers
    config.architectures = [type(teacher).__name__]
    student = type(teacher)(config)
    if not init_from_teacher:
        return student.to(teacher.dtype)

    prefix = _layer_list(teacher, teacher_layers) + "."
    layer_key = re.compile(re.escape(prefix) + r"(\d+)\.(.*)")
    source = teacher.state_dict()
    state = {}
    for key in student.state_dict():
        match = layer_key.fullmatch(key)
        source_key = f"{prefix}{layer_indices[int(match.group(1))]}.{match.group(2)}" if match else key
        state[key] = source[source_key].detach().clone()
    student.load_state_dict(state, strict=True)
    student.to(teacher.dtype)
    logger.info(f"Derived a {num_layers}-layer student from teacher layers {layer_indices}.")
    return student


# ---------------------------------------------------------------------------------------------------------------------
# The text-classification run: teacher (fine-tuned here when its head is new) -> KD student -> CE-only baseline
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class TextArguments:
    """The text side of a run: columns, tokenization, and where the student comes from.

    The teacher is `--teacher_model_name_or_path` (a [`DistillationConfig`] argument). The student is either
    `--student_model_name_or_path` (any sequence classifier, with its own tokenizer if it has one) or derived from
    the teacher's config with `--student_num_layers` layers, initialised from teacher layers (DistilBERT's recipe).
    """

    student_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A pretrained student (Hub id or directory), with its own tokenizer. Default: derive the student "
            "from the teacher (see --student_num_layers)."
        },
    )
    student_num_layers: int | None = field(
        default=None,
        metadata={
            "help": "Layers of the student derived from the teacher's config (default: half the teacher's). Not used "
            "with --student_model_name_or_path."
        },
    )
    student_layer_indices: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated teacher layers the derived student starts from, e.g. '0,5' (default: evenly "
            "spread from the first to the last, DistilBERT's 12 -> 6 choice 0,2,4,7,9,11)."
        },
    )
    init_student_from_teacher: bool = field(
        default=True,
        metadata={
            "help": "Initialise the derived student from the teacher's layers, embeddings and head (DistilBERT's "
            "recipe); --init_student_from_teacher false starts it from random weights."
        },
    )
    student_init_from: str = field(
        default="fine-tuned",
        metadata={
            "help": "Which teacher weights a derived student starts from when the teacher is fine-tuned here: "
            "'fine-tuned' (the teacher it distils, head included) or 'pretrained' (the encoder before this run "
            "fine-tunes it, with its new head, as DistilBERT started from pretrained BERT).",
            "choices": ["fine-tuned", "pretrained"],
        },
    )
    text_column_names: str | None = field(
        default=None,
        metadata={
            "help": "The text column, or two comma-separated for sentence pairs (default: detected, e.g. text, "
            "sentence1,sentence2, premise,hypothesis)."
        },
    )
    max_length: int = field(default=128, metadata={"help": "Truncate token sequences to this many tokens."})
    train_teacher: str = field(
        default="auto",
        metadata={
            "help": "Fine-tune the teacher before distilling: 'auto' when its classification head is new (a "
            "pretrained encoder not yet trained for this task), 'yes' always, 'no' never.",
            "choices": ["auto", "yes", "no"],
        },
    )
    f1_metric_name_or_path: str | None = field(
        default="f1",
        metadata={
            "help": "The evaluate F1 metric reported beside accuracy for two-class tasks: a Hub name or a local "
            "module directory (offline). Skipped with a warning when it cannot be loaded; 'none' turns it off."
        },
    )

    def __post_init__(self):
        if self.train_teacher not in ("auto", "yes", "no"):
            raise ValueError(f"train_teacher must be 'auto', 'yes' or 'no', got {self.train_teacher!r}.")
        if self.student_init_from not in ("fine-tuned", "pretrained"):
            raise ValueError(f"student_init_from must be 'fine-tuned' or 'pretrained', got {self.student_init_from!r}.")
        if self.max_length < 8:
            raise ValueError(f"max_length must be >= 8 tokens, got {self.max_length}.")
        if self.student_model_name_or_path and self.student_layer_indices:
            raise ValueError(
                "student_layer_indices picks the teacher layers of a derived student; it cannot be combined with "
                "student_model_name_or_path."
            )

    @property
    def layer_indices(self) -> list[int] | None:
        if not self.student_layer_indices:
            return None
        try:
            return [int(i) for i in self.student_layer_indices.split(",")]
        except ValueError:
            raise ValueError(
                f"student_layer_indices must be comma-separated integers, got {self.student_layer_indices!r}."
            ) from None


# ExperimentArguments fields that only mean something for images.
_IMAGE_ONLY = {"teacher": None, "student": None, "teacher_max_shift": 0}


def parse_text_arguments(defaults: dict[str, Any] | None = None, argv: list[str] | None = None):
    """Parse `argv` (default `sys.argv[1:]`) into `(DataArguments, ExperimentArguments, TextArguments,
    DistillationConfig)`, with an example's `defaults` replacing the dataclasses' own."""
    import sys

    from transformers import HfArgumentParser

    from .configuration_distillation import DistillationConfig
    from .experiment import DataArguments, ExperimentArguments

    parser = HfArgumentParser((DataArguments, ExperimentArguments, TextArguments, DistillationConfig))
    if defaults:
        unknown = sorted(set(defaults) - {action.dest for action in parser._actions})
        if unknown:
            raise ValueError(f"Unknown argument names in the example's defaults: {unknown}.")
        parser.set_defaults(**defaults)
    data_args, experiment_args, text_args, config = parser.parse_args_into_dataclasses(
        args=sys.argv[1:] if argv is None else list(argv)
    )
    if not data_args.dataset_name:
        raise ValueError("--dataset_name is required.")
    if not config.teacher_model_name_or_path:
        raise ValueError(
            "--teacher_model_name_or_path is required: the teacher (or the pretrained encoder to fine-tune)."
        )
    for name, unset in _IMAGE_ONLY.items():
        if getattr(experiment_args, name) != unset:
            raise ValueError(
                f"--{name} applies to image runs only; for text use --teacher_model_name_or_path and "
                "--student_model_name_or_path / --student_num_layers."
            )
    if data_args.image_column is not None:
        raise ValueError("--image_column applies to image runs only; for text use --text_column_names.")
    return data_args, experiment_args, text_args, config


def load_text_teacher(
    name_or_path: str, names: Sequence[str], init_kwargs: Mapping[str, Any] | None = None
) -> tuple[PreTrainedModel, dict[str, int], bool]:
    """Load the teacher as a sequence classifier for the dataset's classes.

    Returns the model, the `label -> id` mapping the data must follow, and whether its classification head is new
    (missing from the checkpoint, or resized: a pretrained encoder not yet trained for this task), read off
    `from_pretrained`'s loading info.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from .teacher import resolve_init_kwargs

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
    from .metrics import load_metric

    try:
        return load_metric(name_or_path)
    except (FileNotFoundError, OSError) as error:
        logger.warning(f"F1 is skipped: {error} (set --f1_metric_name_or_path to a local module, or 'none').")
        return None


def text_distillation_task(state, data_args, experiment_args, text_args: TextArguments, config):
    """The text side of [`hf_kd.experiment.run_distillation`]: the dataset's text and label columns, the teacher
    (fine-tuned when its head is new), each model's tokenization done once, and how to build the student.

    1. Load the dataset; detect its text column(s) (one, or a sentence pair) and label column.
    2. Teacher: `config.teacher_model_name_or_path` as a sequence classifier; trained first when its head is new
       (`--train_teacher auto`).
    3. Tokenize once for each model; with two tokenizers the student's data carries the teacher's own inputs
       (`teacher_input_ids`, ...).
    4. Student: `--student_model_name_or_path`, or derived from the teacher with `--student_num_layers` layers,
       initialised from its fine-tuned layers, or from the pretrained encoder (`--student_init_from pretrained`).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    from .data import load_raw_dataset, select_split
    from .experiment import DistillationTask

    seed = config.seed
    raw = load_raw_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=data_args.dataset_cache_dir)
    train_raw = select_split(raw, data_args.train_split, "train_split")
    eval_raw = select_split(raw, data_args.eval_split, "eval_split")
    if data_args.max_train_samples is not None:
        train_raw = train_raw.select(range(min(data_args.max_train_samples, len(train_raw))))
    if data_args.max_eval_samples is not None:
        eval_raw = eval_raw.select(range(min(data_args.max_eval_samples, len(eval_raw))))
    label_column = detect_label_column(train_raw, data_args.label_column)
    text_columns = detect_text_columns(train_raw, text_args.text_column_names, label_column)
    names = label_names(train_raw, label_column)
    logger.info(f"Text columns {text_columns}, label column {label_column!r}, classes {names}.")
    f1 = _optional_f1(text_args.f1_metric_name_or_path, len(names))

    # --- Teacher -------------------------------------------------------------------------------------------------
    teacher_source = config.teacher_model_name_or_path
    set_seed(seed)  # a new classification head is initialised at random: the same seed gives the same teacher
    teacher, label2id, head_is_new = load_text_teacher(teacher_source, names, config.teacher_model_init_kwargs)
    teacher_tokenizer = AutoTokenizer.from_pretrained(teacher_source)
    train_teacher = text_args.train_teacher == "yes" or (text_args.train_teacher == "auto" and head_is_new)
    if head_is_new and not train_teacher:
        logger.warning("The teacher's classification head is new but --train_teacher no: it distils an untrained head.")

    def tokenize(dataset, tokenizer, other=None):
        with state.main_process_first():  # one process fills the datasets cache, the others read it
            return tokenize_dataset(
                dataset, tokenizer, text_columns, label_column, label2id, max_length=text_args.max_length,
                teacher_tokenizer=other, num_proc=data_args.preprocessing_num_workers,
            )  # fmt: skip

    teacher_train, teacher_eval = tokenize(train_raw, teacher_tokenizer), tokenize(eval_raw, teacher_tokenizer)

    # --- Student: built twice from the same seed, so the KD student and the baseline start identical ---------------
    # A student derived from the pretrained encoder is taken now, before the sequence fine-tunes the teacher.
    pretrained_student = None
    if (
        not text_args.student_model_name_or_path
        and text_args.init_student_from_teacher
        and text_args.student_init_from == "pretrained"
        and train_teacher
    ):
        layers = text_args.student_num_layers or max(1, teacher.config.num_hidden_layers // 2)
        pretrained_student = derive_student(teacher, layers, text_args.layer_indices)

    def build_student(teacher: PreTrainedModel) -> PreTrainedModel:
        if pretrained_student is not None:
            return copy.deepcopy(pretrained_student)
        set_seed(seed)
        if text_args.student_model_name_or_path:
            return AutoModelForSequenceClassification.from_pretrained(
                text_args.student_model_name_or_path,
                num_labels=len(names),
                id2label={i: n for n, i in label2id.items()},
                label2id=dict(label2id),
                ignore_mismatched_sizes=True,
            )
        teacher_layers = teacher.config.num_hidden_layers
        num_layers = text_args.student_num_layers or max(1, teacher_layers // 2)
        return derive_student(teacher, num_layers, text_args.layer_indices, text_args.init_student_from_teacher)

    if text_args.student_model_name_or_path:
        student_tokenizer = AutoTokenizer.from_pretrained(text_args.student_model_name_or_path)
        shared = same_tokenizer(student_tokenizer, teacher_tokenizer)
    else:
        student_tokenizer, shared = teacher_tokenizer, True
    if shared:
        student_train, student_eval = teacher_train, teacher_eval
    else:
        logger.info(
            "Teacher and student tokenize differently: the teacher gets its own inputs (teacher_input_ids, ...)."
        )
        student_train = tokenize(train_raw, student_tokenizer, teacher_tokenizer)
        student_eval = tokenize(eval_raw, student_tokenizer, teacher_tokenizer)

    return DistillationTask(
        task="text-classification",
        train_dataset=student_train,
        eval_dataset=student_eval,
        data_collator=DataCollatorWithTeacherPadding(student_tokenizer, None if shared else teacher_tokenizer),
        processing_class=student_tokenizer,
        teacher=teacher,
        teacher_name=teacher_source + (" (fine-tuned here)" if train_teacher else ""),
        train_teacher=train_teacher,
        build_student=build_student,
        teacher_train_dataset=teacher_train,
        teacher_eval_dataset=teacher_eval,
        teacher_data_collator=DataCollatorWithTeacherPadding(teacher_tokenizer),
        teacher_processing_class=teacher_tokenizer,
        extra_metrics={"F1": f1} if f1 is not None else {},
    )


def run_text_distillation(data_args, experiment_args, text_args: TextArguments, config):
    """
    Teacher, distilled student and CE-only baseline on a text-classification dataset, then the same report as the
    image examples ([`hf_kd.report.DistillationReport`], `task="text-classification"`) and the distilled student's
    model card (pushed with `--push_to_hub`): [`hf_kd.experiment.run_distillation`] with [`text_distillation_task`].

    The teacher is fine-tuned here first (plain cross-entropy, `--teacher_num_train_epochs` /
    `--teacher_learning_rate`) when its head is new; its logits are precomputed once with
    `--precompute_teacher_logits`. The KD student is trained with [`DistillationTrainer`], then the same student from
    the same initial weights on the labels alone (`--skip_baseline` skips it); all three are saved with their
    tokenizers and measured. Returns the report on the main process, `None` on the others.
    """
    from .experiment import run_distillation

    return run_distillation(
        lambda state: text_distillation_task(state, data_args, experiment_args, text_args, config),
        data_args,
        experiment_args,
        config,
    )
