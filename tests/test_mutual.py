"""Online and self distillation: MutualLearningTrainer (deep mutual learning) and the EMA teacher callback."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TinyConfig, TinyForSequenceClassification, make_student
from transformers import (
    AutoModelForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from hf_kd import DistillationConfig, DistillationTrainer
from hf_kd.losses.logit import mutual_learning_loss
from hf_kd.training.ema import EMATeacherCallback
from hf_kd.training.mutual import MutualLearningConfig, MutualLearningTrainer

ARGS = {
    "per_device_train_batch_size": 32, "num_train_epochs": 1, "learning_rate": 1e-2, "logging_steps": 4,
    "save_strategy": "no", "report_to": "none", "seed": 0, "dataloader_pin_memory": False, "disable_tqdm": True,
    "temperature": 2.0,
}  # fmt: skip


def mutual_config(tmp_path, name="out", **overrides):
    return MutualLearningConfig(output_dir=str(tmp_path / name), **{**ARGS, **overrides})


def state(model):
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_same(a, b, **tolerance):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], **tolerance, msg=name)


# ---------------------------------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------------------------------


def test_mutual_loss_is_the_formula_and_stops_gradients_at_the_other_peers():
    torch.manual_seed(0)
    logits = [torch.randn(6, 5, requires_grad=True) for _ in range(3)]
    labels = torch.tensor([0, 1, 2, 3, 4, -100])
    T, weight = 2.0, 0.7
    terms = mutual_learning_loss(logits, labels, temperature=T, kl_weight=weight)

    valid = labels != -100
    total = 0.0
    for k in range(3):
        ce = F.cross_entropy(logits[k][valid], labels[valid])
        log_q = F.log_softmax(logits[k][valid] / T, -1)
        kls = []
        for other in (l for l in range(3) if l != k):
            p = F.softmax(logits[other][valid] / T, -1)
            kls.append(T**2 * (p * (p.log() - log_q)).sum(-1).mean())
        kl = sum(kls) / 2
        torch.testing.assert_close(terms[f"ce_{k}"], ce)
        torch.testing.assert_close(terms[f"kl_{k}"], kl)
        total = total + ce + weight * kl
    torch.testing.assert_close(terms["loss"], total)

    # Peer 0's own loss moves peer 0's logits only: the others' outputs are constants in it.
    (terms["ce_0"] + terms["kl_0"]).backward()
    assert logits[0].grad is not None and logits[0].grad.abs().sum() > 0
    assert logits[1].grad is None and logits[2].grad is None


def test_mutual_config_refuses_what_does_not_apply(tmp_path):
    with pytest.raises(ValueError, match="precompute_teacher_logits"):
        mutual_config(tmp_path, precompute_teacher_logits=True)
    with pytest.raises(ValueError, match="kl_weight"):
        mutual_config(tmp_path, kl_weight=-1.0)
    converted = MutualLearningConfig.from_config(DistillationConfig(output_dir=str(tmp_path), temperature=3.0))
    assert converted.temperature == 3.0 and converted.kl_weight == 1.0


# ---------------------------------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------------------------------


def test_identical_peers_stay_identical(tmp_path, tiny_task):
    _, train, _ = tiny_task
    first = make_student(seed=3)
    peers = [first, copy.deepcopy(first)]
    initial = state(first)
    MutualLearningTrainer(models=peers, args=mutual_config(tmp_path), train_dataset=train).train()
    assert any(not torch.equal(initial[name], value) for name, value in state(peers[0]).items())  # it trained
    assert_same(state(peers[0]), state(peers[1]), rtol=0, atol=0)


def test_kl_weight_zero_is_independent_ce_trainings(tmp_path, tiny_task):
    # A small max_grad_norm, so that clipping acts: per peer, as two separate trainings clip.
    _, train, _ = tiny_task
    peers = [make_student(seed=1), make_student(seed=2)]
    mutual = mutual_config(tmp_path, kl_weight=0.0, max_grad_norm=0.05)
    MutualLearningTrainer(models=peers, args=mutual, train_dataset=train).train()
    plain = {key: value for key, value in ARGS.items() if key != "temperature"}
    for seed, peer in zip((1, 2), peers):
        alone = make_student(seed=seed)
        args = TrainingArguments(output_dir=str(tmp_path / f"alone{seed}"), max_grad_norm=0.05, **plain)
        Trainer(model=alone, args=args, train_dataset=train).train()
        assert_same(state(peer), state(alone), rtol=1e-5, atol=1e-6)


def linear_peer(seed: int):
    """A peer of another architecture than `make_student`'s: no hidden layer."""
    torch.manual_seed(seed)
    return TinyForSequenceClassification(TinyConfig(hidden_size=0))


def accuracy(prediction):
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def test_peers_log_their_terms_save_as_models_and_resume(tmp_path, tiny_task):
    _, train, test = tiny_task
    args = mutual_config(tmp_path, num_train_epochs=2, save_strategy="steps", save_steps=16, eval_strategy="epoch")
    peers = [make_student(seed=1), linear_peer(seed=2)]
    trainer = MutualLearningTrainer(
        models=peers, args=args, train_dataset=train, eval_dataset=test, compute_metrics=accuracy
    )
    trainer.train()
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert {"loss_ce_0", "loss_kl_0", "loss_ce_1", "loss_kl_1"} <= logged
    assert {"eval_accuracy_0", "eval_accuracy_1", "eval_loss_kl_1"} <= logged

    # Every checkpoint and the final save hold each peer as a complete from_pretrained model, with its card.
    trainer.save_model(str(tmp_path / "final"))
    probe = test[:8]["features"]
    for k, peer in enumerate(peers):
        saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "final" / f"peer_{k}")
        torch.testing.assert_close(saved(probe).logits, peer(probe).logits)
        assert "mutual learning" in (tmp_path / "final" / f"peer_{k}" / "README.md").read_text()
    checkpoint = Path(args.output_dir) / "checkpoint-16"  # mid-run: 32 steps in all
    assert sorted(p.name for p in checkpoint.glob("peer_*")) == ["peer_0", "peer_1"]

    # Resumed from the mid-run checkpoint (peers built from other seeds): the uninterrupted run's end state.
    resumed = [make_student(seed=98), linear_peer(seed=99)]
    again = MutualLearningTrainer(models=resumed, args=args, train_dataset=train, eval_dataset=test,
                                  compute_metrics=accuracy)  # fmt: skip
    again.train(resume_from_checkpoint=str(checkpoint))
    assert again.state.global_step == trainer.state.global_step
    for peer, other in zip(peers, resumed):
        assert_same(state(other), state(peer), rtol=1e-5, atol=1e-6)


def test_the_same_object_twice_is_refused(tmp_path):
    peer = make_student()
    with pytest.raises(ValueError, match="twice"):
        MutualLearningTrainer(models=[peer, peer], args=mutual_config(tmp_path))


# ---------------------------------------------------------------------------------------------------------------------
# The EMA teacher
# ---------------------------------------------------------------------------------------------------------------------


class RecordStudent(TrainerCallback):
    """The student's weights after every optimizer step (registered before the EMA callback: it sees them first)."""

    def __init__(self):
        self.states = []

    def on_step_end(self, args, state_, control, model=None, **kwargs):
        self.states.append(state(model))


def test_ema_teacher_after_n_steps_is_the_moving_average(tmp_path, tiny_task):
    _, train, _ = tiny_task
    student = make_student(seed=4)
    s0 = state(student)
    decay = 0.9
    ema = EMATeacherCallback.from_student(student, decay=decay)
    record = RecordStudent()
    args = DistillationConfig(output_dir=str(tmp_path / "ema"), **{**ARGS, "max_steps": 6})
    DistillationTrainer(model=student, teacher_model=ema.teacher, args=args, train_dataset=train,
                        callbacks=[record, ema]).train()  # fmt: skip

    # teacher_n = decay**n * s_0 + (1 - decay) * sum_{i=1..n} decay**(n - i) * s_i
    n = len(record.states)
    assert n == 6
    for name in s0:
        expected = decay**n * s0[name] + (1 - decay) * sum(
            decay ** (n - i) * record.states[i - 1][name] for i in range(1, n + 1)
        )
        torch.testing.assert_close(ema.teacher.state_dict()[name], expected, rtol=1e-5, atol=1e-6)
    assert not any(p.requires_grad for p in ema.teacher.parameters())  # never touched by the optimizer


def test_ema_teacher_refuses_precomputed_logits(tmp_path, tiny_task):
    _, train, _ = tiny_task
    student = make_student()
    ema = EMATeacherCallback.from_student(student)
    args = DistillationConfig(output_dir=str(tmp_path / "ema"), precompute_teacher_logits=True, **ARGS)
    with pytest.raises(ValueError, match="EMA teacher: the EMA teacher changes"):
        DistillationTrainer(model=student, teacher_model=ema.teacher, args=args, train_dataset=train, callbacks=[ema])
    with pytest.raises(ValueError, match="decay"):
        EMATeacherCallback(student, decay=1.0)


def test_a_diverged_mutual_run_is_stopped(tmp_path, tiny_task):
    # One shared base with the distillation trainer: a NaN loss stops the run at the first logging step after it.
    _, train, _ = tiny_task
    peers = [make_student(seed=1), make_student(seed=2)]
    with torch.no_grad():
        peers[0].net[0].weight.fill_(float("nan"))
    args = mutual_config(tmp_path, logging_steps=2)
    trainer = MutualLearningTrainer(models=peers, args=args, train_dataset=train)
    with pytest.raises(FloatingPointError, match=r"MutualLearningTrainer: non-finite training loss at step 2\b.*loss_ce_0 nan"):
        trainer.train()
    assert not list(Path(args.output_dir).glob("checkpoint-*"))  # nothing saved from the diverged run
