"""The losses against their formulas, written out with explicit exp/log arithmetic."""

import math

import pytest
import torch

from hf_kd.losses.logit import (
    distillation_loss,
    hard_label_loss,
    logit_mse_loss,
    reverse_kl_loss,
    soft_loss,
    soft_target_loss,
)


def _softmax_rows(rows, T):
    out = []
    for row in rows:
        m = max(v / T for v in row)
        e = [math.exp(v / T - m) for v in row]
        z = sum(e)
        out.append([x / z for x in e])
    return out


def _manual_kl(s_rows, t_rows, T):
    """T**2 * mean over rows of sum_c p_t * (log p_t - log p_s), by hand."""
    p_s, p_t = _softmax_rows(s_rows, T), _softmax_rows(t_rows, T)
    total = 0.0
    for ps, pt in zip(p_s, p_t):
        total += sum(b * (math.log(b) - math.log(a)) for a, b in zip(ps, pt))
    return T * T * total / len(s_rows)


def _manual_ce(rows, labels):
    total, n = 0.0, 0
    for row, y in zip(rows, labels):
        if y == -100:
            continue
        m = max(row)
        total += -(row[y] - m - math.log(sum(math.exp(v - m) for v in row)))
        n += 1
    return total / n


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 5, generator=g, dtype=torch.float64) * 3, torch.randn(6, 5, generator=g, dtype=torch.float64) * 3


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 10.0])
def test_soft_target_matches_formula_with_t_squared_scaling(logits, T):
    s, t = logits
    got = soft_target_loss(s, t, temperature=T).item()
    assert got == pytest.approx(_manual_kl(s.tolist(), t.tolist(), T), rel=1e-5)


def test_t_squared_factor(logits):
    s, t = logits
    # Same softened distributions, so the only difference between T=1 on (s/3, t/3) and T=3 on (s, t) is the 3**2.
    assert soft_target_loss(s, t, temperature=3.0).item() == pytest.approx(
        9 * soft_target_loss(s / 3, t / 3, temperature=1.0).item(), rel=1e-5
    )


def test_reverse_kl_and_mse_match_formulas(logits):
    s, t = logits
    assert reverse_kl_loss(s, t, temperature=2.0).item() == pytest.approx(_manual_kl(t.tolist(), s.tolist(), 2.0), rel=1e-5)
    manual_mse = sum((a - b) ** 2 for rs, rt in zip(s.tolist(), t.tolist()) for a, b in zip(rs, rt)) / s.numel()
    assert logit_mse_loss(s, t).item() == pytest.approx(manual_mse, rel=1e-5)
    assert soft_loss("mse", s, t, 2.0).item() == pytest.approx(manual_mse, rel=1e-5)
    with pytest.raises(ValueError, match="loss_type"):
        soft_loss("js", s, t)


def test_hard_label_loss_matches_formula_and_ignores_minus_100(logits):
    s, _ = logits
    labels = torch.tensor([0, 4, -100, 2, -100, 1])
    assert hard_label_loss(s, labels).item() == pytest.approx(_manual_ce(s.tolist(), labels.tolist()), rel=1e-6)


@pytest.mark.parametrize("loss_type", ["kl", "reverse_kl", "mse"])
def test_identical_logits_give_zero(logits, loss_type):
    s, _ = logits
    assert soft_loss(loss_type, s, s.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_alpha_endpoints_are_exact(logits):
    s, t = logits
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    loss0, hard, soft = distillation_loss(s, t, labels, temperature=2.0, alpha=0.0).values()
    assert torch.equal(loss0, hard_label_loss(s, labels))
    loss1 = distillation_loss(s, t, labels, temperature=2.0, alpha=1.0)["loss"]
    assert torch.equal(loss1, soft_target_loss(s, t, 2.0))
    mixed, hard, soft = distillation_loss(s, t, labels, temperature=2.0, alpha=0.3).values()
    manual = 0.7 * _manual_ce(s.tolist(), labels.tolist()) + 0.3 * _manual_kl(s.tolist(), t.tolist(), 2.0)
    assert mixed.item() == pytest.approx(manual, rel=1e-5)


def test_minus_100_positions_are_excluded_from_both_terms():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 7, 3, generator=g), torch.randn(2, 7, 3, generator=g)
    labels = torch.randint(0, 3, (2, 7), generator=g)
    labels[0, 2:] = -100
    labels[1, 5:] = -100
    loss, hard, soft = distillation_loss(s, t, labels, temperature=2.0, alpha=0.5).values()
    valid = labels != -100
    s_rows, t_rows = s[valid].tolist(), t[valid].tolist()
    assert soft.item() == pytest.approx(_manual_kl(s_rows, t_rows, 2.0), rel=1e-5)
    assert hard.item() == pytest.approx(_manual_ce(s_rows, labels[valid].tolist()), rel=1e-5)
    # Garbage at the masked positions changes nothing.
    s2, t2 = s.clone(), t.clone()
    s2[~valid], t2[~valid] = 1e3, -1e3
    loss2 = distillation_loss(s2, t2, labels, temperature=2.0, alpha=0.5)["loss"]
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_large_logits_stay_finite_and_are_float32(dtype):
    s = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0]]).to(dtype)
    t = torch.tensor([[-1e4, 1e4, 0.0], [1e4, -1e4, 0.0]]).to(dtype)
    loss, hard, soft = distillation_loss(s, t, torch.tensor([0, 1]), temperature=1.0, alpha=0.5).values()
    for value in (loss, hard, soft, reverse_kl_loss(s, t), logit_mse_loss(s, t)):
        assert value.dtype == torch.float32
        assert torch.isfinite(value)
    # The student puts all its mass where the teacher puts none: the KL is ~2e4 per row, not inf.
    assert soft.item() == pytest.approx(2e4, rel=1e-2)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_soft_term_gradient_is_t_times_probability_difference_over_n(logits, T):
    s, t = logits
    s = s.clone().requires_grad_(True)
    soft_target_loss(s, t, temperature=T).backward()
    p_s = torch.tensor(_softmax_rows(s.detach().tolist(), T), dtype=torch.float64)
    p_t = torch.tensor(_softmax_rows(t.tolist(), T), dtype=torch.float64)
    expected = T * (p_s - p_t) / s.shape[0]
    torch.testing.assert_close(s.grad, expected, rtol=1e-5, atol=1e-7)


def test_no_labels_needs_alpha_one(logits):
    s, t = logits
    terms = distillation_loss(s, t, None, temperature=2.0, alpha=1.0)
    assert "ce" not in terms and torch.equal(terms["loss"], terms["kd"])
    with pytest.raises(ValueError, match="labels are required when alpha < 1"):
        distillation_loss(s, t, None, alpha=0.5)


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match="same shape"):
        soft_target_loss(torch.zeros(2, 3), torch.zeros(2, 4))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_full_objective_gradient_matches_its_formula(logits, alpha):
    """d loss / d s = w * ((1 - alpha) * (softmax(s) - onehot(y)) + alpha * T * (softmax(s / T) - softmax(t / T))),
    with w = 1 / n_valid on valid rows and 0 on ignored ones."""
    s, t = logits
    T = 3.0
    labels = torch.tensor([0, 4, -100, 2, 1, -100])
    s = s.clone().requires_grad_(True)
    distillation_loss(s, t, labels, temperature=T, alpha=alpha)["loss"].backward()
    valid = labels != -100
    onehot = torch.zeros_like(t)
    onehot[valid, labels[valid]] = 1.0
    p_s1 = torch.tensor(_softmax_rows(s.detach().tolist(), 1.0), dtype=torch.float64)
    p_sT = torch.tensor(_softmax_rows(s.detach().tolist(), T), dtype=torch.float64)
    p_tT = torch.tensor(_softmax_rows(t.tolist(), T), dtype=torch.float64)
    expected = ((1 - alpha) * (p_s1 - onehot) + alpha * T * (p_sT - p_tT)) * valid[:, None] / valid.sum()
    torch.testing.assert_close(s.grad, expected, rtol=1e-5, atol=1e-7)
