"""Text classification data: which columns hold the text and the label, tokenization once for both models, and
the collator that pads the student's and the teacher's inputs each with its own tokenizer.

- [`detect_text_columns`] / [`detect_label_column`]: the text (one column, or a sentence pair) and the label.
- [`tokenize_dataset`]: tokenizes once up front with `Dataset.map` (cached by fingerprint). When the teacher has
  its own tokenizer, the teacher's encoding of the same text rides along as `teacher_input_ids`, ...; with several
  teachers (an ensemble), each whose tokenizer differs from the student's as `teacher_<k>_input_ids`, ... (see
  [`hf_kd.batch`]).
- [`DataCollatorWithTeacherPadding`]: dynamic padding of the student's inputs *and* each teacher's, and of
  token-level labels and teacher logits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from datasets import ClassLabel, Dataset
from transformers import (
    DataCollatorForTokenClassification,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)

from ..batch import LABELS, TEACHER_LOGITS, inputs_by_member, split_batch, teacher_column
from ..losses.logit import IGNORE_INDEX
from .loading import generic_labels, is_string

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
    strings = tuple(n for n, f in dataset.features.items() if is_string(f) and n != label_column)
    if 1 <= len(strings) <= 2:
        return strings
    raise ValueError(
        f"Cannot tell which columns hold the text (string columns: {list(strings)}, all columns: {columns}): pass "
        "text_column_names (--text_column_names), one column or two comma-separated for sentence pairs."
    )


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


TeacherTokenizers = PreTrainedTokenizerBase | Sequence[PreTrainedTokenizerBase | None] | None


def _as_members(teacher_tokenizer: TeacherTokenizers) -> dict[int | None, PreTrainedTokenizerBase | None]:
    """Each teacher's tokenizer by the member index of its columns: `{None: t}` for one teacher (its columns are
    `teacher_*`; a sequence of one is one teacher), `{k: t_k}` for the teachers of an ensemble (`teacher_<k>_*`)."""
    if teacher_tokenizer is None:
        return {}
    if isinstance(teacher_tokenizer, PreTrainedTokenizerBase):
        return {None: teacher_tokenizer}
    tokenizers = list(teacher_tokenizer)
    if not all(t is None or isinstance(t, PreTrainedTokenizerBase) for t in tokenizers):
        raise ValueError(
            "teacher_tokenizer must be a tokenizer, or a sequence of one tokenizer (or None) per teacher, got "
            f"{[type(t).__name__ for t in tokenizers]}."
        )
    return {None: tokenizers[0]} if len(tokenizers) == 1 else dict(enumerate(tokenizers))


def teacher_encoders(
    tokenizer: PreTrainedTokenizerBase, teacher_tokenizer: TeacherTokenizers
) -> dict[int | None, PreTrainedTokenizerBase]:
    """The teachers that need an encoding of their own, by member index (see [`_as_members`]): those whose tokenizer
    encodes differently from the student's `tokenizer` ([`same_tokenizer`]). The others read the student's columns,
    so no column is stored twice."""
    members = _as_members(teacher_tokenizer)
    return {k: t for k, t in members.items() if t is not None and not same_tokenizer(tokenizer, t)}


def tokenize_dataset(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    text_columns: Sequence[str],
    label_column: str | None = None,
    label2id: Mapping[str, int] | None = None,
    max_length: int | None = None,
    teacher_tokenizer: TeacherTokenizers = None,
    teacher_max_length: int | None = None,
    num_proc: int | None = None,
) -> Dataset:
    """Tokenize once, up front (`Dataset.map`, cached by fingerprint), without padding: the collator pads per batch.

    Returns a dataset with the student's inputs (`input_ids`, `attention_mask`, ...), `labels` (class ids, mapped
    through `label2id` from the names of [`label_names`] when given), and, when `teacher_tokenizer` encodes
    differently from `tokenizer`, the teacher's inputs as `teacher_input_ids`, `teacher_attention_mask`, ...
    `teacher_tokenizer` may also be a sequence, one tokenizer (or `None`: the student's) per teacher of an ensemble:
    teacher `k` then gets `teacher_<k>_input_ids`, ... when its tokenizer differs from the student's, and reads the
    student's columns otherwise ([`teacher_encoders`]). Every other column is dropped.
    """
    if not 1 <= len(text_columns) <= 2:
        raise ValueError(f"text_columns must name one or two columns, got {list(text_columns)}.")
    teachers = teacher_encoders(tokenizer, teacher_tokenizer)  # empty when one encoding serves every model
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
        for member, encoder in teachers.items():
            teacher = encoder(*texts, truncation=True, max_length=teacher_max_length or max_length)
            encoded.update({teacher_column(k, member): v for k, v in teacher.items()})
        if label_column is not None:
            encoded["labels"] = [to_id(v) for v in batch[label_column]]
        return encoded

    return dataset.map(
        encode,
        batched=True,
        remove_columns=dataset.column_names,
        num_proc=num_proc,
        desc="Tokenizing" + (" for student and teacher" + "s" * (len(teachers) > 1) if teachers else ""),
    )


@dataclass
class DataCollatorWithTeacherPadding:
    """Pads a batch of tokenized examples for distillation: the student's inputs with `tokenizer`, the
    `teacher_*` inputs with `teacher_tokenizer` (its own pad id and padding side), each to its own longest sequence;
    with several teachers, each member's `teacher_<k>_*` inputs with its own tokenizer `teacher_tokenizer[k]`.

    `labels` are class ids (sequence classification) or per-token ids padded with `label_pad_token_id`
    (token classification); per-token `teacher_logits` are padded with zeros, positions the loss masks anyway.

    Args:
        tokenizer: the student's tokenizer.
        teacher_tokenizer: the teacher's, when it differs; defaults to `tokenizer`. For an ensemble, a sequence of
            one tokenizer (or `None`: the student's) per teacher, as given to [`tokenize_dataset`].
        padding, max_length, pad_to_multiple_of: as for [`~transformers.DataCollatorWithPadding`], for both models.
        label_pad_token_id: the label of padded positions in token classification (ignored by the losses).
    """

    tokenizer: PreTrainedTokenizerBase
    teacher_tokenizer: TeacherTokenizers = None
    padding: bool | str = True
    max_length: int | None = None
    pad_to_multiple_of: int | None = None
    label_pad_token_id: int = IGNORE_INDEX
    return_tensors: str = "pt"

    def _pad(self, tokenizer: PreTrainedTokenizerBase, features: list[dict], labels: list | None) -> dict:
        """One model's inputs padded with its own tokenizer; per-token labels too, by transformers' own
        `DataCollatorForTokenClassification` (it pads them on the tokenizer's side with `label_pad_token_id`)."""
        if labels is not None:
            features = [{**feature, LABELS: label} for feature, label in zip(features, labels)]
            collator = DataCollatorForTokenClassification(
                tokenizer, self.padding, self.max_length, self.pad_to_multiple_of, self.label_pad_token_id
            )
            return dict(collator(features))
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
        rows = [split_batch({LABELS if k in ("label", "label_ids") else k: v for k, v in f.items()}) for f in features]
        labels = [row.labels for row in rows] if rows[0].labels is not None else None
        per_token = labels is not None and torch.as_tensor(labels[0]).dim() >= 1
        batch = self._pad(self.tokenizer, [row.student_inputs for row in rows], labels if per_token else None)
        if labels is not None and not per_token:
            batch[LABELS] = torch.as_tensor(labels, dtype=torch.long)
        members = [inputs_by_member(row.teacher_inputs) for row in rows]
        for member in members[0]:
            padded = self._pad(self._teacher_tokenizer(member), [groups[member] for groups in members], None)
            batch.update({teacher_column(k, member): v for k, v in padded.items()})
        if rows[0].teacher_logits is not None:
            batch[TEACHER_LOGITS] = self._pad_logits([row.teacher_logits for row in rows], batch)
        for name in rows[0].teacher_targets.keys() - {TEACHER_LOGITS}:  # cached teacher features: vectors per example
            batch[name] = torch.stack([torch.as_tensor(row.teacher_targets[name]) for row in rows])
        return batch

    def _teacher_tokenizer(self, member: int | None) -> PreTrainedTokenizerBase:
        """The tokenizer that pads the `teacher_*` inputs (`member=None`) or member `k`'s `teacher_<k>_*` ones:
        `teacher_tokenizer` when it is one tokenizer, its `k`-th entry for an ensemble, the student's when none."""
        members = _as_members(self.teacher_tokenizer)
        if None in members or not members:
            return members.get(None) or self.tokenizer
        if member is None or member not in members:
            column = teacher_column("input_ids", member)
            raise ValueError(
                f"The batch has {column!r} but teacher_tokenizer gives tokenizers for teachers {sorted(members)} only: "
                "give one tokenizer per teacher, in the order of the teacher_<k>_* columns."
            )
        return members[member] or self.tokenizer

    def _pad_logits(self, values: list, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Stack per-example teacher logits; per-token ones `(L_i, C)` padded with zeros (positions the losses mask)
        to the student's padded length, on the tokenizer's side so that they stay aligned with the input ids."""
        tensors = [torch.as_tensor(v, dtype=torch.float32) for v in values]
        if tensors[0].dim() < 2:
            return torch.stack(tensors)
        side = self.tokenizer.padding_side
        padded = torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True, padding_value=0.0, padding_side=side)
        length = batch["input_ids"].shape[1] if "input_ids" in batch else padded.shape[1]
        if padded.shape[1] < length:  # pad_to_multiple_of / max_length padding made the inputs longer
            extra = padded.new_zeros(len(tensors), length - padded.shape[1], *padded.shape[2:])
            padded = torch.cat([extra, padded] if side == "left" else [padded, extra], dim=1)
        return padded
