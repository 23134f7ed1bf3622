"""Teacher outputs computed once: `add_teacher_logits`, the trainer's precompute switch, black-box soft targets."""

import numpy as np
import pytest
import torch
from conftest import make_student
from datasets import Dataset, load_from_disk
from test_trainer import agreement, config

from hf_kd import DistillationTrainer, add_teacher_logits
from hf_kd.teacher.precompute import teacher_fingerprint


class CallCounter:
    """Counts real forward calls of a module (a hook on the real teacher, not a stand-in)."""

    def __init__(self, module):
        self.calls = 0
        module.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1


def test_precomputed_logits_equal_the_live_teachers(tiny_task):
    teacher, train, _ = tiny_task
    with_logits = add_teacher_logits(train, teacher, batch_size=100)
    assert with_logits.format["type"] == "torch"
    rows = with_logits[:]
    with torch.no_grad():
        expected = teacher(rows["features"]).logits
    torch.testing.assert_close(rows["teacher_logits"], expected)


def test_live_and_precomputed_teacher_give_the_same_loss(tmp_path, tiny_task):
    teacher, train, _ = tiny_task
    student = make_student()
    batch = train[:32]
    live = DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path), train_dataset=train)
    cached = DistillationTrainer(model=student, args=config(tmp_path), train_dataset=add_teacher_logits(train, teacher))
    live_loss = live.compute_loss(student, dict(batch))
    cached_batch = cached.train_dataset[:32]
    assert set(cached_batch) == {"features", "labels", "teacher_logits"}
    cached_loss = cached.compute_loss(student, dict(cached_batch))
    torch.testing.assert_close(live_loss, cached_loss)


def test_precomputed_logits_of_an_in_memory_dataset(tiny_task):
    from hf_kd.data import InMemoryDataset

    teacher, train, _ = tiny_task
    tensors = InMemoryDataset.from_dataset(train.with_format("torch"))
    counter = CallCounter(teacher)
    with_logits = add_teacher_logits(tensors, teacher, batch_size=100)
    assert counter.calls == 6  # 512 rows in slices of 100
    assert isinstance(with_logits, InMemoryDataset)
    assert with_logits.column_names == ["features", "labels", "teacher_logits"]
    assert with_logits.columns["features"] is tensors.columns["features"]  # the inputs are shared, not copied
    with torch.no_grad():
        expected = teacher(tensors.columns["features"]).logits
    torch.testing.assert_close(with_logits.columns["teacher_logits"], expected)
    # The same values as the datasets path, and the same float16 storage option.
    torch.testing.assert_close(with_logits.columns["teacher_logits"], add_teacher_logits(train, teacher)[:]["teacher_logits"])
    half = add_teacher_logits(tensors, teacher, dtype="float16").columns["teacher_logits"]
    assert half.dtype == torch.float16 and torch.allclose(half.float(), expected, atol=1e-2)


@pytest.mark.parametrize("in_memory", [False, True], ids=["datasets", "in_memory"])
def test_precompute_switch_never_runs_the_teacher_while_training(tmp_path, tiny_task, in_memory):
    from hf_kd.data import InMemoryDataset

    teacher, train, test = tiny_task
    if in_memory:
        train = InMemoryDataset.from_dataset(train.with_format("torch"))
    counter = CallCounter(teacher)
    trainer = DistillationTrainer(
        model=make_student(), teacher_model=teacher, args=config(tmp_path, alpha=1.0, num_train_epochs=8,
                                                                 precompute_teacher_logits=True, teacher_batch_size=512),
        train_dataset=train,
    )
    assert "teacher_logits" in trainer.train_dataset.column_names
    calls_after_precompute = counter.calls
    assert calls_after_precompute == 1  # one batch of 512 rows
    trainer.train()
    assert counter.calls == calls_after_precompute
    assert agreement(trainer.model, teacher, test) >= 0.95


def test_cache_is_reused_for_the_same_teacher_and_refreshed_for_another(tmp_path, tiny_task):
    teacher, train, _ = tiny_task
    train.save_to_disk(tmp_path / "train")
    on_disk = load_from_disk(str(tmp_path / "train")).with_format("torch")
    counter = CallCounter(teacher)
    first = add_teacher_logits(on_disk, teacher, batch_size=128)
    assert counter.calls == 4 and first.cache_files
    again = add_teacher_logits(load_from_disk(str(tmp_path / "train")).with_format("torch"), teacher, batch_size=128)
    assert counter.calls == 4, "the second run with the same teacher and data must reuse the cache"
    assert again._fingerprint == first._fingerprint

    fingerprint = teacher_fingerprint(teacher)
    with torch.no_grad():
        teacher.net[-1].bias[0] += 1.0
    assert teacher_fingerprint(teacher) != fingerprint
    changed = add_teacher_logits(on_disk, teacher, batch_size=128)
    assert counter.calls == 8, "a teacher with other weights must not reuse stale logits"
    assert changed._fingerprint != first._fingerprint
    assert not torch.equal(changed[:]["teacher_logits"], first[:]["teacher_logits"])


def test_float16_storage(tiny_task):
    teacher, train, _ = tiny_task
    half = add_teacher_logits(train, teacher, dtype="float16")
    full = add_teacher_logits(train, teacher)
    assert half.features["teacher_logits"].feature.dtype == "float16"
    torch.testing.assert_close(half[:]["teacher_logits"].float(), full[:]["teacher_logits"], rtol=1e-3, atol=1e-2)
    with pytest.raises(ValueError, match="dtype must be one of"):
        add_teacher_logits(train, teacher, dtype="int8")


def test_black_box_soft_targets_need_no_teacher(tmp_path, tiny_task):
    """Logits produced elsewhere (another framework, an API) are soft targets as they are."""
    teacher, train, test = tiny_task
    rows = train[:]
    with torch.no_grad():
        external = teacher(rows["features"]).logits.numpy()  # stands for an API's answer: plain numbers
    black_box = Dataset.from_dict({"features": rows["features"].numpy(), "labels": rows["labels"].numpy(),
                                   "teacher_logits": external}).with_format("torch")
    student = make_student()
    DistillationTrainer(model=student, args=config(tmp_path, alpha=1.0, num_train_epochs=8),
                        train_dataset=black_box).train()
    assert agreement(student, teacher, test) >= 0.95


def test_on_the_fly_transform_is_refused(tmp_path, tiny_task):
    teacher, train, _ = tiny_task
    augmented = train.with_format(None)
    augmented.set_transform(lambda batch: {"features": torch.tensor(batch["features"]) + torch.randn(1),
                                           "labels": torch.tensor(batch["labels"])})
    with pytest.raises(ValueError, match="on-the-fly transform .*would not match the inputs"):
        add_teacher_logits(augmented, teacher)
    with pytest.raises(ValueError, match="precompute_teacher_logits=True, but the train dataset has an on-the-fly"):
        DistillationTrainer(model=make_student(), teacher_model=teacher,
                            args=config(tmp_path, precompute_teacher_logits=True, remove_unused_columns=False),
                            train_dataset=augmented)


def test_teacher_logits_of_the_wrong_width_are_refused(tmp_path, tiny_task):
    _, train, _ = tiny_task
    rows = train[:]
    wrong = Dataset.from_dict({"features": rows["features"].numpy(), "labels": rows["labels"].numpy(),
                               "teacher_logits": np.zeros((len(train), 7), dtype=np.float32)})
    with pytest.raises(ValueError, match="teacher_logits have 7 columns per example but the student has num_labels=4"):
        DistillationTrainer(model=make_student(), args=config(tmp_path), train_dataset=wrong)
    broken = wrong.remove_columns("teacher_logits").add_column(
        "teacher_logits", [[float("nan")] * 4] + [[0.0] * 4] * (len(train) - 1))
    with pytest.raises(ValueError, match="teacher_logits column contains NaN or inf"):
        DistillationTrainer(model=make_student(), args=config(tmp_path), train_dataset=broken)


def test_no_teacher_and_no_logits_is_refused(tmp_path, tiny_task):
    _, train, _ = tiny_task
    with pytest.raises(ValueError, match="needs a teacher"):
        DistillationTrainer(model=make_student(), args=config(tmp_path), train_dataset=train)


def test_in_memory_tensor_dataset_trains_like_the_datasets_dataset(tmp_path, tiny_task):
    """The fast path (whole batches indexed from tensors) gives the same training as the datasets.Dataset."""
    from hf_kd.data import InMemoryDataset

    teacher, train, _ = tiny_task
    extra = train.add_column("unused", list(range(len(train))))  # dropped by remove_unused_columns on both paths
    results = []
    for dataset in (extra, InMemoryDataset.from_dataset(extra.with_format("torch"))):
        student = make_student(seed=4)
        DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path), train_dataset=dataset).train()
        results.append(student.state_dict())
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], msg=name)

    tensors = InMemoryDataset.from_dataset(add_teacher_logits(train, teacher))
    assert tensors.column_names == ["features", "labels", "teacher_logits"]
    batch = tensors.__getitems__([3, 1])
    assert batch["features"].shape == (2, 16) and torch.equal(batch["labels"], train[[3, 1]]["labels"])
    with pytest.raises(ValueError, match="teacher_logits have 4 columns per example but the student has num_labels=3"):
        DistillationTrainer(model=make_student(num_labels=3), args=config(tmp_path), train_dataset=tensors)


def test_a_reloaded_teacher_keeps_its_fingerprint(tmp_path):
    """Saving and loading a teacher changes where it says it came from (`_name_or_path`, `architectures`,
    `auto_map`), not its outputs: the logits computed before it was saved are still its logits. A setting that
    changes the outputs still changes the fingerprint."""
    from transformers import AutoModelForImageClassification

    from hf_kd.models import model_from_preset

    torch.manual_seed(0)
    teacher = model_from_preset("mnist-mlp-teacher")
    teacher.save_pretrained(tmp_path / "teacher")
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "teacher")
    assert reloaded.config._name_or_path != teacher.config._name_or_path
    assert teacher_fingerprint(reloaded) == teacher_fingerprint(teacher)
    reloaded.config.dropout = 0.5
    assert teacher_fingerprint(reloaded) != teacher_fingerprint(teacher)
