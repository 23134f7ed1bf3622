"""Losses against a black-box teacher's answers, and the generalized JSD, against their formulas written out."""

import math

import pytest
import torch

from hf_kd.losses.divergence import generalized_jsd_rows
from hf_kd.losses.logit import distillation_loss, soft_loss
from hf_kd.losses.partial import (
    answer_loss,
    label_loss,
    probs_loss,
    top_k_renormalized_loss,
    top_k_tail_loss,
)

S = [[2.0, -1.0, 0.5, 0.0, 1.0], [0.1, 0.2, -3.0, 1.5, 0.0], [-1.0, 3.0, 0.0, 0.0, 0.5]]
T = [[1.0, 0.0, 2.0, -1.0, 0.5], [0.0, 2.5, -1.0, 1.0, 0.3], [0.5, 1.0, -2.0, 0.0, 2.0]]


def _softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [x / sum(e) for x in e]


def _kl(p, q):
    """sum_c p_c log(p_c / q_c), with 0 log 0 = 0."""
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def _top_k(p, k):
    order = sorted(range(len(p)), key=lambda c: -p[c])[:k]
    return order, [p[c] for c in order]


def _tensors(k):
    teacher_probs = [_softmax(row) for row in T]
    tops = [_top_k(p, k) for p in teacher_probs]
    indices = torch.tensor([idx for idx, _ in tops])
    probs = torch.tensor([vals for _, vals in tops])
    return torch.tensor(S), indices, probs, teacher_probs


def test_full_probs_is_the_kl_by_hand():
    student, _, _, teacher_probs = _tensors(1)
    expected = sum(_kl(pt, _softmax(s)) for pt, s in zip(teacher_probs, S)) / len(S)
    assert probs_loss(student, torch.tensor(teacher_probs)).item() == pytest.approx(expected, rel=1e-5)


def test_labels_only_is_cross_entropy_on_the_teachers_argmax():
    student = torch.tensor(S)
    argmax = [max(range(5), key=lambda c: row[c]) for row in T]
    expected = sum(-math.log(_softmax(s)[y]) for s, y in zip(S, argmax)) / len(S)
    assert label_loss(student, torch.tensor(argmax)).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_top_k_tail_bucket_by_hand_and_never_above_full_kl(k):
    student, indices, probs, teacher_probs = _tensors(k)
    expected, full = 0.0, 0.0
    for s_row, t_probs, idx, vals in zip(S, teacher_probs, indices.tolist(), probs.tolist()):
        ps = _softmax(s_row)
        teacher = vals + [1 - sum(vals)]
        student_k = [ps[c] for c in idx]
        student_side = student_k + [1 - sum(student_k)]
        row = _kl(teacher, student_side)
        assert row <= _kl(t_probs, ps) + 1e-9  # grouping categories never increases a KL, row by row
        expected += row / len(S)
        full += _kl(t_probs, ps) / len(S)
    loss = top_k_tail_loss(student, indices, probs).item()
    assert loss == pytest.approx(expected, rel=1e-4)
    assert loss <= full + 1e-6


@pytest.mark.parametrize("k", [1, 2, 3])
def test_top_k_renormalized_by_hand(k):
    student, indices, probs, _ = _tensors(k)
    expected = 0.0
    for s_row, idx, vals in zip(S, indices.tolist(), probs.tolist()):
        teacher = [v / sum(vals) for v in vals]
        student_k = _softmax([s_row[c] for c in idx])
        expected += _kl(teacher, student_k) / len(S)
    assert top_k_renormalized_loss(student, indices, probs).item() == pytest.approx(expected, abs=1e-6)


def test_top_k_with_k_equal_to_classes_is_the_full_kl():
    student, indices, probs, teacher_probs = _tensors(5)
    full = probs_loss(student, torch.tensor(teacher_probs)).item()
    assert top_k_tail_loss(student, indices, probs).item() == pytest.approx(full, rel=1e-4, abs=1e-6)
    assert top_k_renormalized_loss(student, indices, probs).item() == pytest.approx(full, rel=1e-4, abs=1e-6)


def test_identical_answers_give_zero():
    student = torch.tensor(S)
    own = torch.softmax(student, -1)
    values, indices = own.topk(3, dim=-1)
    assert probs_loss(student, own).item() == pytest.approx(0.0, abs=1e-6)
    assert top_k_tail_loss(student, indices, values).item() == pytest.approx(0.0, abs=1e-6)
    assert top_k_renormalized_loss(student, indices, values).item() == pytest.approx(0.0, abs=1e-6)
    assert probs_loss(student, own, divergence="jsd", beta=0.3).item() == pytest.approx(0.0, abs=1e-6)
    sure = torch.tensor([[30.0, 0.0, 0.0]])  # a student certain of the label: CE ~ 0
    assert label_loss(sure, torch.tensor([0])).item() == pytest.approx(0.0, abs=1e-6)


def _jsd_by_hand(ps, pt, beta):
    m = [(1 - beta) * a + beta * b for a, b in zip(ps, pt)]
    return beta * _kl(pt, m) + (1 - beta) * _kl(ps, m)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_jsd_is_trls_formula_without_t_squared(beta, temperature):
    expected = 0.0
    for s_row, t_row in zip(S, T):
        ps = _softmax([v / temperature for v in s_row])
        pt = _softmax([v / temperature for v in t_row])
        expected += _jsd_by_hand(ps, pt, beta) / len(S)
    loss = soft_loss("jsd", torch.tensor(S), torch.tensor(T), temperature, beta=beta)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_jsd_endpoints_are_forward_and_reverse_kl():
    student, teacher = torch.tensor(S), torch.tensor(T)
    forward = sum(_kl(_softmax(t), _softmax(s)) for s, t in zip(S, T)) / len(S)
    reverse = sum(_kl(_softmax(s), _softmax(t)) for s, t in zip(S, T)) / len(S)
    assert soft_loss("jsd", student, teacher, beta=0.0).item() == pytest.approx(forward, rel=1e-5)
    assert soft_loss("jsd", student, teacher, beta=1.0).item() == pytest.approx(reverse, rel=1e-5)
    # Near the endpoints the mixture form tends to 0 (M -> one of the two), which is why TRL special-cases them.
    assert soft_loss("jsd", student, teacher, beta=1e-4).item() < 1e-2 * forward


def test_jsd_matches_trls_kl_div_code_on_finite_inputs():
    """The same value as TRL 1.16's generalized_jsd_loss body (F.kl_div on log-probs), per row."""
    s, t = torch.log_softmax(torch.tensor(S), -1), torch.log_softmax(torch.tensor(T), -1)
    beta = torch.tensor(0.3)
    m = torch.logsumexp(torch.stack([s + torch.log1p(-beta), t + torch.log(beta)]), dim=0)
    trl = beta * torch.nn.functional.kl_div(m, t, reduction="none", log_target=True) + (1 - beta) * torch.nn.functional.kl_div(
        m, s, reduction="none", log_target=True
    )
    assert torch.allclose(generalized_jsd_rows(s, t, 0.3), trl.sum(-1), atol=1e-6)


def test_distillation_loss_routes_answers_and_teaches_unlabelled_rows():
    student, indices, probs, _ = _tensors(3)
    labels = torch.tensor([1, -100, -100])  # one labelled example, two transfer examples
    answers = {"top_k_indices": indices, "top_k_probs": probs}
    terms = distillation_loss(student, None, labels, alpha=0.5, teacher_answers=answers)
    kd = top_k_tail_loss(student, indices, probs)  # over all three rows
    ce = -math.log(_softmax(S[0])[1])  # over the labelled row only
    assert terms["kd"].item() == pytest.approx(kd.item(), rel=1e-6)
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(0.5 * ce + 0.5 * kd.item(), rel=1e-5)


def test_reverse_kl_against_labels_is_refused():
    with pytest.raises(ValueError, match="infinite against label-only answers"):
        answer_loss(torch.tensor(S), {"labels": torch.tensor([0, 1, 2])}, divergence="reverse_kl")


def test_gradients_are_finite_with_zero_probabilities():
    student = torch.tensor(S, requires_grad=True)
    label_loss(student, torch.tensor([0, 3, 1])).backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
