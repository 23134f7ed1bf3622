"""DistillationTrainer on a synthetic task whose teacher is a known function (a fixed random linear map)."""

import copy
from pathlib import Path

import pytest
import torch
from conftest import make_student, make_teacher
from safetensors.torch import load_file
from transformers import (
    AutoModelForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from hf_kd import DistillationConfig, DistillationTrainer
from hf_kd.losses.logit import soft_target_loss


def config(tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=32,
        num_train_epochs=1,
        learning_rate=1e-2,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        seed=0,
        dataloader_pin_memory=False,
        disable_tqdm=True,
        temperature=2.0,
        alpha=0.5,
    )
    defaults.update(overrides)
    return DistillationConfig(**defaults)


def agreement(model_a, model_b, dataset):
    with torch.no_grad():
        a = model_a(dataset[:]["features"]).logits.argmax(-1)
        b = model_b(dataset[:]["features"]).logits.argmax(-1)
    return (a == b).float().mean().item()


def held_out_kl(student, teacher, dataset, T=2.0):
    with torch.no_grad():
        return soft_target_loss(student(dataset[:]["features"]).logits, teacher(dataset[:]["features"]).logits, T).item()


def test_pure_distillation_learns_the_teacher(tmp_path, tiny_task):
    teacher, train, test = tiny_task
    teacher_state = copy.deepcopy(teacher.state_dict())
    student = make_student()
    kl_before = held_out_kl(student, teacher, test)
    args = config(tmp_path, alpha=1.0, num_train_epochs=8)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=train, eval_dataset=test)
    trainer.train()
    kl_after = held_out_kl(student, teacher, test)
    assert kl_after < kl_before / 10, (kl_before, kl_after)
    assert agreement(student, teacher, test) >= 0.95
    # The teacher is frozen: every parameter bitwise unchanged, no gradient, never in train mode.
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_state[name]), name
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert not teacher.training
    # The optimizer only ever saw the student's parameters.
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized <= {id(p) for p in student.parameters()}
    assert not optimized & {id(p) for p in teacher.parameters()}


def test_teacher_dropout_stays_off_during_training(tmp_path, tiny_task):
    _, train, test = tiny_task
    teacher = make_teacher(dropout=0.5)
    teacher.train()  # even when handed over in train mode
    probe = test[:32]["features"]
    seen = []

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            with torch.no_grad():
                seen.append(trainer.teacher_model(probe).logits.clone())

    trainer = DistillationTrainer(
        model=make_student(), teacher_model=teacher, args=config(tmp_path), train_dataset=train, callbacks=[Probe()]
    )
    trainer.train()
    assert len(seen) == len(train) // 32
    assert all(torch.equal(s, seen[0]) for s in seen)
    # And they are the dropout-free logits.
    reference = make_teacher(dropout=0.0)
    torch.testing.assert_close(seen[0], reference(probe).logits, rtol=0, atol=0)


def test_alpha_zero_is_plain_trainer(tmp_path, tiny_task):
    teacher, train, _ = tiny_task
    distilled = make_student(seed=3)
    DistillationTrainer(
        model=distilled, teacher_model=teacher, args=config(tmp_path, alpha=0.0, num_train_epochs=2), train_dataset=train
    ).train()
    plain = make_student(seed=3)
    plain_args = TrainingArguments(**{k: v for k, v in config(tmp_path, num_train_epochs=2).to_dict().items()
                                      if k in TrainingArguments.__dataclass_fields__ and k not in ("hub_token",)})
    Trainer(model=plain, args=plain_args, train_dataset=train).train()
    for (name, a), (_, b) in zip(distilled.state_dict().items(), plain.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def test_gradient_accumulation_matches_the_larger_batch(tmp_path, tiny_task):
    teacher, train, _ = tiny_task
    train = train.select(range(128))
    students = []
    for batch, accumulation in ((16, 1), (8, 2)):
        student = make_student(seed=5)
        args = config(tmp_path / f"{batch}", per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                      learning_rate=5e-2)
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=train)
        trainer.train()
        assert trainer.state.global_step == 128 // 16
        students.append(student)
    for (name, a), (_, b) in zip(students[0].state_dict().items(), students[1].state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_loss_parts_reach_log_history(tmp_path, tiny_task):
    teacher, train, test = tiny_task
    args = config(tmp_path, eval_strategy="steps", eval_steps=8)
    trainer = DistillationTrainer(model=make_student(), teacher_model=teacher, args=args, train_dataset=train,
                                  eval_dataset=test)
    trainer.train()
    train_logs = [h for h in trainer.state.log_history if "loss" in h]
    eval_logs = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert train_logs and eval_logs
    for entry in train_logs:
        assert entry["loss_ce"] > 0 and entry["loss_kd"] >= 0
        # The logged loss is the weighted mix of the logged parts (both averaged over the same window).
        assert entry["loss"] == pytest.approx(0.5 * entry["loss_ce"] + 0.5 * entry["loss_kd"], rel=1e-3)
    for entry in eval_logs:
        assert entry["eval_loss"] == pytest.approx(0.5 * entry["eval_loss_ce"] + 0.5 * entry["eval_loss_kd"], rel=1e-3)
    metrics = trainer.evaluate(metric_key_prefix="test")
    assert {"test_loss", "test_loss_ce", "test_loss_kd"} <= set(metrics)


def test_checkpoint_holds_the_student_only_and_resumes(tmp_path, tiny_task):
    teacher, train, _ = tiny_task
    args = config(tmp_path, save_strategy="steps", save_steps=8, num_train_epochs=2)
    student = make_student()
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=train)
    trainer.train()
    checkpoint = Path(args.output_dir) / "checkpoint-16"
    assert checkpoint.is_dir()
    weights = load_file(checkpoint / "model.safetensors")
    assert set(weights) == set(student.state_dict())
    teacher_tensors = list(teacher.state_dict().values())
    assert not any(w.shape == t.shape and torch.equal(w, t) for w in weights.values() for t in teacher_tensors)
    reloaded = AutoModelForSequenceClassification.from_pretrained(checkpoint)
    assert type(reloaded) is type(student)
    probe = train[:8]["features"]
    # checkpoint-16 is mid-run (32 steps in all); the final save_model is the end state.
    trainer.save_model(str(tmp_path / "final"))
    final = AutoModelForSequenceClassification.from_pretrained(tmp_path / "final")
    torch.testing.assert_close(final(probe).logits, student(probe).logits)
    assert set(load_file(tmp_path / "final" / "model.safetensors")) == set(student.state_dict())

    # Resuming from the mid-run checkpoint reaches the same end state as the uninterrupted run.
    resumed_student = make_student(seed=99)
    resumed = DistillationTrainer(model=resumed_student, teacher_model=teacher, args=args, train_dataset=train)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == trainer.state.global_step
    torch.testing.assert_close(resumed_student(probe).logits, student(probe).logits, rtol=1e-5, atol=1e-6)


def test_teacher_loaded_from_a_path_with_the_students_auto_class(tmp_path, tiny_task):
    teacher, train, _ = tiny_task
    teacher.save_pretrained(tmp_path / "teacher")
    args = config(tmp_path, teacher_model_name_or_path=str(tmp_path / "teacher"),
                  teacher_model_init_kwargs='{"dtype": "float32"}')
    assert args.teacher_model_init_kwargs == {"dtype": "float32"}
    trainer = DistillationTrainer(model=make_student(), args=args, train_dataset=train)
    probe = train[:4]["features"]
    torch.testing.assert_close(trainer.teacher_model(probe).logits, teacher(probe).logits)
    assert not any(p.requires_grad for p in trainer.teacher_model.parameters())


# --- bad input -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "field, value, message",
    [("temperature", 0.0, "temperature must be a number > 0, got 0.0"),
     ("temperature", -1, "temperature"),
     ("alpha", 1.5, "alpha must be a number in \\[0, 1\\].*got 1.5"),
     ("alpha", -0.1, "alpha"),
     ("loss_type", "js", "loss_type must be one of .*'js'"),
     ("teacher_model_init_kwargs", "dtype=bf16", "teacher_model_init_kwargs must be a dict")],
)
def test_config_validation_names_the_argument(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **{field: value})


def test_config_parses_from_the_command_line(tmp_path):
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(DistillationConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--temperature", "3", "--alpha", "0.9", "--loss_type", "reverse_kl",
         "--teacher_model_init_kwargs", '{"revision": "v1"}']
    )
    assert (args.temperature, args.alpha, args.loss_type) == (3.0, 0.9, "reverse_kl")
    assert args.teacher_model_init_kwargs == {"revision": "v1"}


def test_mismatched_num_labels_is_refused(tmp_path, tiny_task):
    teacher, train, _ = tiny_task
    with pytest.raises(ValueError, match=r"student \(TinyForSequenceClassification\) has num_labels=3.*teacher "
                                         r"\(TinyForSequenceClassification\) has num_labels=4"):
        DistillationTrainer(model=make_student(num_labels=3), teacher_model=teacher, args=config(tmp_path))


def test_reordered_labels_are_refused(tmp_path):
    names = ["cat", "dog", "bird", "fish"]
    teacher = make_teacher()
    teacher.config.id2label = dict(enumerate(names))
    teacher.config.label2id = {v: k for k, v in teacher.config.id2label.items()}
    student = make_student(id2label=dict(enumerate(reversed(names))))
    with pytest.raises(ValueError, match="order their classes differently.*'fish'.*'cat'"):
        DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path))


def test_teacher_that_is_the_student_is_refused(tmp_path):
    student = make_student()
    with pytest.raises(ValueError, match="teacher_model is the student model itself"):
        DistillationTrainer(model=student, teacher_model=student, args=config(tmp_path))


def test_missing_labels_with_alpha_below_one(tmp_path, tiny_task):
    teacher, train, _ = tiny_task
    unlabelled = train.remove_columns("labels")
    trainer = DistillationTrainer(model=make_student(), teacher_model=teacher, args=config(tmp_path, alpha=0.5),
                                  train_dataset=unlabelled)
    with pytest.raises(ValueError, match="no 'labels', but alpha=0.5 < 1"):
        trainer.train()
    # With alpha=1 the same data trains.
    trainer = DistillationTrainer(model=make_student(), teacher_model=teacher, args=config(tmp_path, alpha=1.0),
                                  train_dataset=unlabelled)
    assert trainer.train().training_loss > 0


def test_non_finite_teacher_logits_name_the_teacher_and_step(tmp_path, tiny_task):
    teacher, train, _ = tiny_task
    broken = copy.deepcopy(teacher)

    class BreakTeacher(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                with torch.no_grad():
                    broken.net[-1].bias[0] = float("nan")

    trainer = DistillationTrainer(model=make_student(), teacher_model=broken, args=config(tmp_path),
                                  train_dataset=train, callbacks=[BreakTeacher()])
    with pytest.raises(ValueError, match="teacher's logits contain NaN or inf at step 3 \\(live teacher\\)"):
        trainer.train()


def test_args_must_be_a_distillation_config(tmp_path, tiny_task):
    teacher, _, _ = tiny_task
    with pytest.raises(TypeError, match="args must be a DistillationConfig"):
        DistillationTrainer(model=make_student(), teacher_model=teacher, args=TrainingArguments(str(tmp_path)))


def test_floating_point_ops_count_as_the_trainers_and_follow_the_model(tmp_path, tiny_task):
    teacher, train, _ = tiny_task
    trainer = DistillationTrainer(model=make_student(), teacher_model=teacher, args=config(tmp_path), train_dataset=train)
    batch = dict(train[:8])
    assert trainer.floating_point_ops(batch) == Trainer.floating_point_ops(trainer, batch) > 0
    trainer.train()
    # Every step counted: 6 * (examples x 16 features) * parameters, as the Trainer's own count gives.
    assert trainer.state.total_flos == 6 * len(train) * 16 * trainer.model.num_parameters(exclude_embeddings=True)
    # The cached parameter count belongs to one model: another model (e.g. from model_init) is counted afresh.
    before = trainer.floating_point_ops(batch)
    trainer.model = make_teacher()
    assert trainer.floating_point_ops(batch) == Trainer.floating_point_ops(trainer, batch) != before
    assert trainer.floating_point_ops({"labels": batch["labels"]}) == 0


def test_precompute_needs_a_dataset_it_can_read(tmp_path, tiny_task):
    teacher, train, _ = tiny_task
    rows = torch.utils.data.TensorDataset(train[:]["features"])
    with pytest.raises(ValueError, match="precompute_teacher_logits needs the train dataset as a datasets.Dataset"):
        DistillationTrainer(model=make_student(), teacher_model=teacher,
                            args=config(tmp_path, precompute_teacher_logits=True), train_dataset=rows)
