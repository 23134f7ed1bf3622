"""Issue 14 ("Reliability"): no silent garbage, no diverged run reported as a success. The trainer- and config-level
items; the command-line table is tests/test_bad_inputs.py, the kill -9 resume test tests/test_resume.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import make_dataset, make_student, make_teacher, tiny_bert
from datasets import Dataset

from hf_kd import DistillationConfig, DistillationTrainer
from hf_kd.data import InMemoryDataset, RandomShiftCollator


def config(tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=32, num_train_epochs=1, learning_rate=1e-2,
        logging_steps=4, save_strategy="no", report_to="none", seed=0, dataloader_pin_memory=False,
        disable_tqdm=True, use_cpu=True,
    )  # fmt: skip
    defaults.update(overrides)
    return DistillationConfig(**defaults)


@pytest.fixture
def task():
    teacher = make_teacher()
    return teacher, make_dataset(teacher, 128, seed=10), make_dataset(teacher, 64, seed=11)


def small_bert(vocab_size: int, seed: int = 0, num_labels: int = 2):
    return tiny_bert(vocab_size=vocab_size, seed=seed, num_labels=num_labels, hidden_size=16, max_position_embeddings=32)


def token_dataset(n: int = 32, vocab: int = 50, teacher_columns: bool = False) -> Dataset:
    g = torch.Generator().manual_seed(0)
    columns = {"input_ids": torch.randint(5, vocab, (n, 8), generator=g).tolist(), "labels": [i % 2 for i in range(n)]}
    if teacher_columns:
        columns["teacher_input_ids"] = columns["input_ids"]
    return Dataset.from_dict(columns)


# --- item 2: non-finite settings and losses ---------------------------------------------------------------------


@pytest.mark.parametrize("field", ["temperature", "alpha"])
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_temperature_and_alpha_must_be_finite(tmp_path, field, value):
    with pytest.raises(ValueError, match=rf"{field} must be a number .*got {value!r} \(a finite number"):
        config(tmp_path, **{field: value})


def test_non_finite_loss_stops_the_run_naming_the_step_and_terms(tmp_path, task):
    teacher, train, _ = task
    student = make_student()
    with torch.no_grad():
        student.net[0].weight[0, 0] = math.inf  # every forward now yields NaN logits: the loss diverges at once
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path), train_dataset=train)
    with pytest.raises(FloatingPointError, match=r"non-finite training loss.* step [1-4]\b.*loss_ce.*loss_kd"):
        trainer.train()


# --- item 6: no training at all -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [({"num_train_epochs": 0}, "num_train_epochs must be > 0"), ({"max_steps": 0}, "max_steps must be > 0")],
)
def test_zero_epochs_or_steps_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **overrides)


# --- item 1 and 9: models that read different inputs ----------------------------------------------------------------


def test_teacher_with_another_vocabulary_needs_its_own_input_ids(tmp_path):
    student, teacher = small_bert(vocab_size=50), small_bert(vocab_size=300, seed=1)
    for precompute in (False, True):
        expected = r"vocab.*300.*50.*teacher_input_ids.*tokenize_dataset\(.*teacher_tokenizer"
        with pytest.raises(ValueError, match=expected):
            DistillationTrainer(model=student, teacher_model=teacher, train_dataset=token_dataset(),
                                args=config(tmp_path, precompute_teacher_logits=precompute))  # fmt: skip
    assert not (tmp_path / "out").exists()
    # With the teacher's own ids in the data, the same pair is fine.
    DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path),
                        train_dataset=token_dataset(teacher_columns=True))  # fmt: skip


def test_teacher_reading_other_inputs_than_the_student_is_refused(tmp_path, task):
    _, train, _ = task
    student, teacher = make_student(), small_bert(50, num_labels=4)  # the student reads `features`, a BERT `input_ids`
    with pytest.raises(ValueError, match=r"take different inputs.*'features'.*'input_ids'"):
        DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path), train_dataset=train)


def test_wrong_width_teacher_logits_in_the_eval_set_are_refused_at_construction(tmp_path, task):
    teacher, train, evaluation = task
    evaluation = evaluation.add_column("teacher_logits", [[0.0] * 3] * len(evaluation))
    with pytest.raises(ValueError, match="eval_dataset's teacher_logits have 3 columns.*num_labels=4"):
        DistillationTrainer(model=make_student(), teacher_model=teacher, args=config(tmp_path), train_dataset=train,
                            eval_dataset=evaluation)  # fmt: skip
    assert not (tmp_path / "out").exists()  # the Trainer had created it: a refused trainer leaves nothing behind


# --- item 5: augmentation never meets logits computed once ------------------------------------------------------------


def test_augmenting_collator_with_precompute_is_refused(tmp_path, task):
    teacher, train, _ = task
    images = Dataset.from_dict({"pixel_values": torch.zeros(8, 1, 4, 4).tolist(), "labels": [0] * 8})
    assert RandomShiftCollator(2).augments_inputs and not RandomShiftCollator(0).augments_inputs
    with pytest.raises(ValueError, match="data_collator .*RandomShiftCollator.* changes the inputs"):
        DistillationTrainer(model=make_student(), teacher_model=teacher, train_dataset=images,
                            data_collator=RandomShiftCollator(2),
                            args=config(tmp_path, precompute_teacher_logits=True))  # fmt: skip


def test_transform_added_after_the_teacher_logits_is_refused(tmp_path, task):
    teacher, train, _ = task
    with_logits = train.add_column("teacher_logits", torch.zeros(len(train), 4).tolist())
    with_logits.set_transform(lambda batch: batch)
    with pytest.raises(ValueError, match="teacher_logits column and an on-the-fly transform"):
        DistillationTrainer(model=make_student(), teacher_model=teacher, args=config(tmp_path),
                            train_dataset=with_logits)  # fmt: skip


# --- item 7 and 8: labels and empty data --------------------------------------------------------------------------


@pytest.mark.parametrize("in_memory", [False, True])
@pytest.mark.parametrize("split", ["train_dataset", "eval_dataset"])
def test_labels_outside_the_classes_are_named(tmp_path, task, in_memory, split):
    teacher, train, evaluation = task
    bad = {"train_dataset": train, "eval_dataset": evaluation}[split]
    labels = bad["labels"][:].clone()
    labels[3] = 10
    bad = bad.remove_columns("labels").add_column("labels", labels.tolist()).with_format("torch")
    data = {"train_dataset": train, "eval_dataset": evaluation, split: bad}
    if in_memory:
        data = {key: InMemoryDataset.from_dataset(value) for key, value in data.items()}
    with pytest.raises(ValueError, match=rf"{split}: its 'labels' column holds class id 10 .*outside \[0, 4\)"):
        DistillationTrainer(model=make_student(), teacher_model=teacher, args=config(tmp_path), **data)


def test_labels_outside_the_classes_in_a_plain_torch_dataset(tmp_path, task):
    teacher, train, _ = task

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, i):
            return {"features": train[i]["features"], "labels": torch.tensor(10 if i == 5 else 0)}

    trainer = DistillationTrainer(model=make_student(), teacher_model=teacher, args=config(tmp_path),
                                  train_dataset=Rows())  # fmt: skip
    with pytest.raises(ValueError, match=r"The batch at step \d+: its 'labels' column holds class id 10 .*\[0, 4\)"):
        trainer.train()


def test_empty_train_dataset_is_named(tmp_path, task):
    teacher, train, _ = task
    with pytest.raises(ValueError, match="train_dataset has no rows"):
        DistillationTrainer(model=make_student(), teacher_model=teacher, args=config(tmp_path),
                            train_dataset=train.select([]))  # fmt: skip
    assert not Path(tmp_path / "out").exists()
