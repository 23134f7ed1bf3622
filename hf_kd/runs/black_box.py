"""The examples' black-box runs (`--teacher_url`): a teacher known only by its answers, unlabeled transfer sets.

The teacher answers every training example once (and every test example, for its accuracy and the students'
agreement with it) through a resumable annotation job ([`hf_kd.teacher.annotate`]); `--max_labeled_samples N`
keeps the labels of the first N training examples only, and `--transfer_dataset` adds unlabeled examples that
only the teacher's answers teach. The CE-only baseline trains on the N labelled examples; the distilled student on
everything, with the black-box loss chosen from the kind of answer ([`hf_kd.losses.partial`]).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..batch import (
    LABELS,
    TEACHER_LABEL,
    TEACHER_PROBS,
    TEACHER_TOP_K_INDICES,
    answer_columns,
)
from ..data import InMemoryDataset
from ..data.loading import load_raw_dataset, select_split
from ..teacher.annotate import annotate_with_teacher
from ..teacher.remote import RemoteTeacher, teacher_from_url
from .arguments import DataArguments, ExperimentArguments
from .experiment import ModelData

IGNORE_INDEX = -100


@dataclass
class BlackBoxData:
    """What a black-box run trains and reports on.

    Args:
        distil_data ([`ModelData`]): every training example (labelled or not) with the teacher's answers.
        labeled_data ([`ModelData`]): the labelled examples only, for the CE-only baseline.
        teacher_test_predictions (`np.ndarray`): the teacher's best class for each test example (from its answers).
        summary (`dict`): what the report records under `black_box` (counts of examples and queries).
    """

    distil_data: ModelData
    labeled_data: ModelData
    teacher_test_predictions: np.ndarray
    summary: dict[str, Any] = field(default_factory=dict)


def remote_teacher(experiment_args: ExperimentArguments, label_names: list[str]) -> RemoteTeacher:
    return teacher_from_url(
        experiment_args.teacher_url, label_names, experiment_args.teacher_answers, experiment_args.teacher_top_k
    )


def raw_split(name: str, split: str, limit: int | None, data_args: DataArguments, argument: str):
    """One split of a dataset as stored (images still encoded, texts as text), cut to its first `limit` rows."""
    raw = select_split(load_raw_dataset(name, data_args.dataset_config_name, cache_dir=data_args.dataset_cache_dir),
                       split, argument, name)  # fmt: skip
    return raw.select(range(min(limit, len(raw)))) if limit is not None else raw


def answers_of(teacher: RemoteTeacher, raw, input_column: str, experiment_args, split: str, counts: dict):
    """The teacher's answers about `raw` (the `split`: train, transfer or test) as tensors by column; the queries it
    took are added to `counts`, in total and by split (a query budget counts the training ones, not the test's)."""
    answered, stats = annotate_with_teacher(
        raw, teacher, input_column, batch_size=experiment_args.teacher_request_batch_size,
        max_in_flight=experiment_args.teacher_max_in_flight, desc=f"Teacher answers ({split})", return_stats=True,
    )  # fmt: skip
    counts["queries"] += stats.queries
    counts["reused_answers"] += stats.reused
    counts["queries_by_split"][split] = stats.queries
    names = answer_columns(answered.column_names)
    table = answered.select_columns(names).with_format("numpy")[:]
    return {name: torch.as_tensor(np.asarray(table[name])) for name in names}


def best_class(answers: dict[str, torch.Tensor]) -> np.ndarray:
    """The teacher's predicted class per example, whatever kind its answers are."""
    if TEACHER_LABEL in answers:
        return answers[TEACHER_LABEL].numpy()
    if TEACHER_PROBS in answers:
        return answers[TEACHER_PROBS].argmax(-1).numpy()
    return answers[TEACHER_TOP_K_INDICES][:, 0].numpy()


def _labels_of(dataset) -> np.ndarray:
    if isinstance(dataset, InMemoryDataset):
        return dataset.columns[LABELS].numpy()
    return np.asarray(dataset.with_format("numpy")[LABELS])


def _join_answers(train, answers: dict[str, torch.Tensor], labeled: int):
    """The prepared training data with the teacher's answers, its labels kept on the first `labeled` rows only."""
    labels = torch.as_tensor(_labels_of(train)).clone()
    labels[labeled:] = IGNORE_INDEX
    if isinstance(train, InMemoryDataset):
        return InMemoryDataset({**train.columns, **answers, LABELS: labels})
    joined = train.remove_columns(LABELS)
    for name, values in {**answers, LABELS: labels}.items():
        joined = joined.add_column(name, values.tolist())
    return joined.with_format(train.format["type"])


def _with_transfer(train, transfer, answers: dict[str, torch.Tensor]):
    """`train` followed by the transfer examples (their inputs prepared as the training data's: tensors by column,
    or a tokenized `Dataset`), with the teacher's answers and no label."""
    n = len(next(iter(answers.values())))
    labels = torch.full((n,), IGNORE_INDEX, dtype=torch.long)
    if isinstance(train, InMemoryDataset):
        extra = {**transfer, **answers, LABELS: labels}
        if not len(train):  # --max_train_samples 0: the transfer set alone (the empty split was never answered)
            return InMemoryDataset({name: extra[name] for name in [*train.columns, *answers]})
        return InMemoryDataset({name: torch.cat([v, extra[name].to(v.dtype)]) for name, v in train.columns.items()})
    from datasets import concatenate_datasets

    for name, values in {**answers, LABELS: labels}.items():
        transfer = transfer.add_column(name, values.tolist())
    if not len(train):  # --max_train_samples 0: the transfer set alone (an empty map keeps no tokenized column)
        return transfer.with_format(train.format["type"])
    transfer = transfer.cast(train.features)
    return concatenate_datasets([train, transfer.select_columns(train.column_names)]).with_format(train.format["type"])


def _first_rows(train, n: int):
    if isinstance(train, InMemoryDataset):
        return InMemoryDataset({name: values[:n] for name, values in train.columns.items()})
    return train.select(range(n))


def black_box_data(
    data: ModelData, label_names: list[str], data_args: DataArguments, experiment_args: ExperimentArguments,
    input_column: Callable[[Any], str], prepare_transfer: Callable[[Any], Any],
) -> BlackBoxData:  # fmt: skip
    """The teacher's answers about the training split (whose labels are kept on the first `max_labeled_samples`
    only), the transfer set (prepared by `prepare_transfer`: raw rows -> the student's inputs, as the training data
    holds them) and the test split, joined to the prepared training data (same row order as the raw split).
    `input_column(raw)` names the column a raw split sends to the teacher."""
    teacher, counts = remote_teacher(experiment_args, label_names), {"queries": 0, "reused_answers": 0, "queries_by_split": {}}
    train, n_train = data.train_dataset, len(data.train_dataset)
    raw_train = raw_split(data_args.dataset_name, data_args.train_split, data_args.max_train_samples, data_args, "train_split")  # fmt: skip
    labeled = n_train if data_args.max_labeled_samples is None else min(data_args.max_labeled_samples, n_train)
    distil_train = train  # no training example (--max_train_samples 0): nothing to ask, the transfer set teaches
    if n_train:
        distil_train = _join_answers(train, answers_of(teacher, raw_train, input_column(raw_train), experiment_args, "train", counts), labeled)  # fmt: skip
    n_transfer = 0
    if data_args.transfer_dataset:
        raw = raw_split(data_args.transfer_dataset, data_args.transfer_split, data_args.max_transfer_samples, data_args, "transfer_split")  # fmt: skip
        answers = answers_of(teacher, raw, input_column(raw), experiment_args, "transfer", counts)
        distil_train, n_transfer = _with_transfer(distil_train, prepare_transfer(raw), answers), len(raw)
    raw_test = raw_split(data_args.dataset_name, data_args.eval_split, data_args.max_eval_samples, data_args, "eval_split")  # fmt: skip
    predictions = best_class(answers_of(teacher, raw_test, input_column(raw_test), experiment_args, "test", counts))  # fmt: skip
    summary = {
        "teacher_url": experiment_args.teacher_url,
        "answers": experiment_args.teacher_answers,
        "top_k": experiment_args.teacher_top_k if experiment_args.teacher_answers == "top_k" else None,
        "labeled_examples": labeled,
        "teacher_answered_examples": n_train + n_transfer,
        "transfer_examples": n_train - labeled + n_transfer,
        "transfer_dataset": data_args.transfer_dataset,
        "queries": counts["queries"],
        "queries_by_split": counts["queries_by_split"],
        "answers_reused_from_disk": counts["reused_answers"],
        "teacher_test_accuracy": float(np.mean(predictions == _labels_of(data.eval_dataset))),
    }
    distil_data = ModelData(distil_train, data.eval_dataset, data.data_collator, data.processing_class)
    labeled_data = ModelData(_first_rows(train, labeled), data.eval_dataset, data.data_collator, data.processing_class)
    return BlackBoxData(distil_data, labeled_data, predictions, summary)


def image_column_of(data_args: DataArguments) -> Callable[[Any], str]:
    """The image column of a raw split: `--image_column`, else the one with the `Image` feature."""

    def column(raw) -> str:
        if data_args.image_column and data_args.image_column in raw.column_names:
            return data_args.image_column
        found = [name for name, feature in raw.features.items() if type(feature).__name__ == "Image"]
        if not found:
            raise ValueError(f"no image column in {raw.column_names}: give --image_column.")
        return found[0]

    return column


def image_transfer_inputs(image_processor, column_of: Callable[[Any], str]) -> Callable[[Any], dict[str, torch.Tensor]]:
    """Raw transfer images -> `pixel_values`, with the student's image processor, once."""

    def prepare(raw) -> dict[str, torch.Tensor]:
        column = column_of(raw)
        pixels = raw.select_columns([column]).map(
            lambda batch: {"pixel_values": image_processor(batch[column], return_tensors="np")["pixel_values"]},
            batched=True, remove_columns=[column], desc="Decoding and normalising the transfer images",
        )  # fmt: skip
        return {"pixel_values": torch.as_tensor(np.asarray(pixels.with_format("numpy")["pixel_values"]))}

    return prepare


def distil_black_box(
    bb: BlackBoxData, build_student: Callable[[], Any], task: str, metric, compute_metrics,
    data_args: DataArguments, experiment_args: ExperimentArguments, config,
):  # fmt: skip
    """The CE-only baseline on the labelled examples, the student distilled from the answers, and the report."""
    from ..training.trainer import DistillationTrainer
    from .experiment import (
        STUDENT_KD_DIR,
        report_run,
        run_stage,
        stage_args,
        train_baseline,
    )

    runs = []
    if not experiment_args.skip_baseline and bb.summary["labeled_examples"] > 0:
        runs.append(train_baseline(build_student(), bb.labeled_data, config, compute_metrics))
    train = bb.distil_data.train_dataset
    trainer = DistillationTrainer(
        model=build_student(),
        # The answers are the teacher: none to load (the text example's default names one) or to precompute.
        args=stage_args(config, STUDENT_KD_DIR, train, precompute_teacher_logits=False, teacher_model_name_or_path=None),
        train_dataset=train,
        eval_dataset=bb.distil_data.eval_dataset,
        data_collator=bb.distil_data.data_collator,
        processing_class=bb.distil_data.processing_class,
        compute_metrics=compute_metrics,
    )
    runs.append(run_stage(STUDENT_KD_DIR, trainer, bb.distil_data))
    teacher_name = f"{experiment_args.teacher_url} (black box)"
    return report_run(runs, task, teacher_name, metric, data_args, experiment_args, config, black_box=bb)


def text_black_box_setup(data_args: DataArguments, text_args, config) -> tuple:
    """Text with a black-box teacher: the student (`--student_model_name_or_path`, a pretrained encoder given a new
    head; `--student_num_layers` keeps that many of its layers) and its tokenization of one text column. Returns
    the data, the class names, how to build the student, the text column of a raw split, and how to tokenize a raw
    transfer split."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    from ..data import (
        DataCollatorWithTeacherPadding,
        detect_label_column,
        detect_text_columns,
        tokenize_dataset,
    )
    from ..data.loading import label_names as class_names
    from ..models.student import derive_student
    from .recipes import _tokenized, load_text_splits

    if not text_args.student_model_name_or_path:
        raise ValueError("--teacher_url with text needs --student_model_name_or_path (the student's pretrained encoder).")  # fmt: skip
    train_raw, test_raw = load_text_splits(data_args)
    label_column = detect_label_column(train_raw, data_args.label_column)
    text_columns = detect_text_columns(train_raw, text_args.text_column_names, label_column)
    if len(text_columns) != 1:
        raise ValueError(f"--teacher_url sends one text per example; this dataset has text pairs {text_columns}.")
    names = class_names(train_raw, label_column)
    label2id = {name: i for i, name in enumerate(names)}
    tokenizer = AutoTokenizer.from_pretrained(text_args.student_model_name_or_path)
    splits = (train_raw, test_raw)
    train, test = _tokenized(tokenizer, label2id, splits, text_columns, label_column, text_args, data_args)
    data = ModelData(train, test, DataCollatorWithTeacherPadding(tokenizer), tokenizer)

    def column(raw) -> str:
        if text_columns[0] in raw.column_names:
            return text_columns[0]
        return detect_text_columns(raw, None, None)[0]

    def tokenized_transfer(raw):
        return tokenize_dataset(raw, tokenizer, [column(raw)], None, max_length=text_args.max_length)

    def build_student():
        set_seed(config.seed)
        model = AutoModelForSequenceClassification.from_pretrained(
            text_args.student_model_name_or_path, num_labels=len(names), id2label=dict(enumerate(names)),
            label2id=label2id, ignore_mismatched_sizes=True,
        )  # fmt: skip
        if text_args.student_num_layers:
            model = derive_student(model, text_args.student_num_layers, text_args.layer_indices, True)
        return model

    return data, names, build_student, column, tokenized_transfer
