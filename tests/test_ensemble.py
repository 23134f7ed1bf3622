"""An ensemble of teachers as one teacher: the combinations against their formulas, the checks, the cache, the trainer."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import make_dataset, make_student, make_teacher
from test_trainer import config

from hf_kd import DistillationConfig, DistillationTrainer, add_teacher_logits
from hf_kd.batch import member_inputs, split_batch, teacher_input_columns
from hf_kd.losses.logit import distillation_loss
from hf_kd.teacher.ensemble import (
    TeacherEnsemble,
    combine_logits,
    confidence_weights,
    mixture_logits,
    weighted_mean_logits,
)

T = 2.0


def _logits(k=3, n=8, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(k, n, c, generator=g), torch.randint(0, c, (n,), generator=g)


@pytest.mark.parametrize("method", ["mean_probs", "mean_logits", "confidence"])
def test_identical_teachers_give_the_single_teachers_loss(method):
    logits, labels = _logits(k=1)
    student = torch.randn(8, 5, requires_grad=True)
    single = distillation_loss(student, logits[0], labels, temperature=T, alpha=0.7)
    weights = [0.2, 0.3, 0.5]
    combined = combine_logits(method, logits.expand(3, -1, -1), weights, T, labels)
    ensemble = distillation_loss(student, combined, labels, temperature=T, alpha=0.7)
    for key in ("loss", "kd", "ce"):
        torch.testing.assert_close(ensemble[key], single[key], rtol=1e-6, atol=1e-6)


def test_mean_probs_is_the_mixture_written_out():
    logits, _ = _logits()
    w = torch.tensor([0.5, 0.3, 0.2])
    mixture = w[0] * F.softmax(logits[0] / T, -1) + w[1] * F.softmax(logits[1] / T, -1) + w[2] * F.softmax(logits[2] / T, -1)
    torch.testing.assert_close(F.softmax(mixture_logits(logits, w, T) / T, -1), mixture)
    # the pseudo-logits are T * log(mixture): their softmax at T is the mixture itself, whatever the row's constant
    torch.testing.assert_close(mixture_logits(logits, w, T), T * mixture.log())


def test_mean_probs_forward_kl_gradient_is_the_weighted_sum_of_per_teacher_kls():
    logits, _ = _logits()
    w = [0.5, 0.3, 0.2]
    student = torch.randn(8, 5, requires_grad=True)

    def kl(p_logits, q_logits):  # KL(softmax(p / T) || softmax(q / T)), batch mean, times T**2
        p = F.softmax(p_logits / T, -1)
        return T**2 * (p * (p.log() - F.log_softmax(q_logits / T, -1))).sum(-1).mean()

    (mixture_grad,) = torch.autograd.grad(kl(mixture_logits(logits, w, T), student), student)
    (sum_grad,) = torch.autograd.grad(sum(w[k] * kl(logits[k], student) for k in range(3)), student)
    torch.testing.assert_close(mixture_grad, sum_grad)


def test_mean_logits_is_the_weighted_mean():
    logits, _ = _logits()
    expected = 0.5 * logits[0] + 0.3 * logits[1] + 0.2 * logits[2]
    torch.testing.assert_close(weighted_mean_logits(logits, [0.5, 0.3, 0.2]), expected)


def test_confidence_weights_are_ca_mkds():
    logits, labels = _logits()
    labels[0] = -100
    ce = torch.stack([-F.log_softmax(z, -1).gather(-1, torch.where(labels < 0, 0, labels)[:, None])[:, 0] for z in logits])
    expected = (1 - ce.exp() / ce.exp().sum(0)) / (3 - 1)
    expected[:, 0] = 1 / 3  # an ignored position: equal weights
    weights = confidence_weights(logits, labels)
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(weights.sum(0), torch.ones(8))
    # the teacher with the lowest cross-entropy on the true label weighs most
    assert (weights[:, 1:].argmax(0) == ce[:, 1:].argmin(0)).all()
    mixed = combine_logits("confidence", logits, None, T, labels)
    torch.testing.assert_close(mixed, mixture_logits(logits, weights, T))


def _teachers(k=3):
    return [make_teacher(seed=seed) for seed in range(k)]


def test_ensemble_forward_and_frozen_teachers():
    teachers = _teachers()
    ensemble = TeacherEnsemble(teachers, weights=[2, 1, 1], temperature=T)
    x = torch.randn(6, 16)
    out = ensemble(features=x)
    stacked = torch.stack([t(x).logits for t in teachers])
    torch.testing.assert_close(out.teacher_logits, stacked)
    torch.testing.assert_close(out.logits, mixture_logits(stacked, [0.5, 0.25, 0.25], T))
    ensemble.train()
    assert not ensemble.training and not any(t.training for t in teachers)
    assert not any(p.requires_grad for p in ensemble.parameters())


def test_confidence_needs_labels():
    ensemble = TeacherEnsemble(_teachers(2), method="confidence", temperature=T)
    with pytest.raises(ValueError, match="needs the batch's `labels`.*precompute_teacher_logits"):
        ensemble(features=torch.randn(4, 16))
    assert ensemble(features=torch.randn(4, 16), labels=torch.tensor([0, 1, 2, 3])).logits.shape == (4, 4)


def test_teacher_with_another_label_order_is_refused_by_name(tmp_path):
    student = make_student(id2label={i: n for i, n in enumerate("abcd")})
    good = make_teacher(seed=0)
    good.config.id2label = {i: n for i, n in enumerate("abcd")}
    bad = make_teacher(seed=1)
    bad.config.id2label = {i: n for i, n in enumerate("bacd")}
    bad.config._name_or_path = "my-shuffled-teacher"
    with pytest.raises(ValueError, match=r"Teacher 1 \(my-shuffled-teacher\).*order their classes differently"):
        DistillationTrainer(model=student, teacher_model=[good, bad], args=config(tmp_path))


def test_cached_ensemble_logits_change_with_any_teacher_weights_and_t(tmp_path):
    teachers = _teachers()
    data = make_dataset(teachers[0], 64, seed=3)

    def cached(ensemble):
        result = add_teacher_logits(data, ensemble, batch_size=32)
        return result._fingerprint, result[:]["teacher_logits"]

    base_fp, base = cached(TeacherEnsemble(teachers, temperature=T))
    again_fp, again = cached(TeacherEnsemble(teachers, temperature=T))
    assert again_fp == base_fp  # the same ensemble reuses its cache
    torch.testing.assert_close(again, base)
    changed = copy.deepcopy(teachers)
    with torch.no_grad():
        changed[2].net[-1].bias[0] += 1.0  # not all classes alike: a shared shift would not change the softmax
    for other in (
        TeacherEnsemble(changed, temperature=T),  # one teacher's weights
        TeacherEnsemble(teachers, weights=[3, 1, 1], temperature=T),  # the teachers' weights
        TeacherEnsemble(teachers, temperature=2 * T),  # the temperature
    ):
        fingerprint, logits = cached(other)
        assert fingerprint != base_fp
        assert not torch.allclose(logits, base)


def test_trainer_distils_a_list_of_teachers_like_the_ensemble(tmp_path):
    teachers = _teachers()
    data = make_dataset(teachers[0], 64, seed=3)
    student = make_student()
    trainer = DistillationTrainer(model=student, teacher_model=teachers, args=config(tmp_path, temperature=T), train_dataset=data)
    assert isinstance(trainer.teacher_model, TeacherEnsemble)
    batch = dict(data[:16])
    expected = distillation_loss(
        student(batch["features"]).logits,
        mixture_logits(torch.stack([t(batch["features"]).logits for t in teachers]), [1 / 3] * 3, T),
        batch["labels"], temperature=T, alpha=0.5,
    )["loss"]  # fmt: skip
    torch.testing.assert_close(trainer.compute_loss(student, batch), expected)


def test_confidence_trains_live_and_refuses_precompute(tmp_path):
    teachers = _teachers(2)
    data = make_dataset(teachers[0], 64, seed=3)
    args = config(tmp_path, ensemble_method="confidence", max_steps=2)
    DistillationTrainer(model=make_student(), teacher_model=teachers, args=args, train_dataset=data).train()
    args = config(tmp_path, ensemble_method="confidence", precompute_teacher_logits=True)
    with pytest.raises(ValueError, match="ensemble_method='confidence'"):
        DistillationTrainer(model=make_student(), teacher_model=teachers, args=args, train_dataset=data)


def test_mixture_with_mse_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mean_logits"):
        DistillationTrainer(model=make_student(), teacher_model=_teachers(2), args=config(tmp_path, loss_type="mse"))


def test_member_inputs_convention():
    batch = {"features": 1, "labels": 2, "teacher_1_features": 3, "teacher_logits": 4}
    split = split_batch(batch)
    inputs = split.inputs_for_teacher()
    assert inputs == {"features": 1, "1_features": 3}  # member 1's own, the student's shared with the others
    assert member_inputs(inputs, 0) == {"features": 1} and member_inputs(inputs, 1) == {"features": 3}
    assert teacher_input_columns(["features", "labels", "teacher_1_features"]) == ["features", "teacher_1_features"]
    # a single teacher's own inputs are unchanged
    assert split_batch({"features": 1, "teacher_features": 3}).inputs_for_teacher() == {"features": 3}
    assert teacher_input_columns(["features", "teacher_features"]) == ["teacher_features"]


def test_each_teacher_reads_its_own_inputs():
    teachers = [make_teacher(seed=0), make_teacher(seed=1, input_size=8)]  # the second reads other inputs
    ensemble = TeacherEnsemble(teachers, temperature=T)
    x, x1 = torch.randn(4, 16), torch.randn(4, 8)
    out = ensemble(**split_batch({"features": x, "teacher_1_features": x1}).inputs_for_teacher())
    torch.testing.assert_close(out.teacher_logits, torch.stack([teachers[0](x).logits, teachers[1](x1).logits]))


def test_config_teacher_list():
    args = dict(output_dir="/tmp/unused", report_to="none")
    assert DistillationConfig(teacher_model_name_or_path=["a"], **args).teacher_model_name_or_path == "a"
    assert DistillationConfig(teacher_model_name_or_path="a", **args).teacher_model_name_or_path == "a"
    assert DistillationConfig(teacher_model_name_or_path=["a", "b"], **args).teacher_model_name_or_path == ["a", "b"]
    with pytest.raises(ValueError, match="teacher_weights has 3 values for 2 teachers"):
        DistillationConfig(teacher_model_name_or_path=["a", "b"], teacher_weights=[1, 1, 1], **args)
    with pytest.raises(ValueError, match="teacher_weights must all be finite numbers > 0"):
        DistillationConfig(teacher_weights=[1, 0], **args)
    with pytest.raises(ValueError, match="ensemble_method must be one of"):
        DistillationConfig(ensemble_method="vote", **args)
    with pytest.raises(ValueError, match="teacher_weights cannot be combined"):
        DistillationConfig(ensemble_method="confidence", teacher_weights=[1, 2], **args)
