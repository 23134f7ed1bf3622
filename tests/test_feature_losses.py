"""The feature losses against their formulas, written out element by element, and the properties each method rests
on (the overhaul margin is E[x | x < 0], attention maps ignore the channel count, RKD ignores scale, ...)."""

import itertools
import math

import pytest
import torch

from hf_kd.losses.feature import (
    attention_map,
    attention_mse_loss,
    attention_transfer_loss,
    cosine_loss,
    hidden_state_mse_loss,
    hint_loss,
    overhaul_loss,
    overhaul_margin_from_bn,
    overhaul_margin_from_features,
    overhaul_margin_from_stats,
    overhaul_negative_stats,
    pkd_loss,
)
from hf_kd.losses.relation import rkd_angle_loss, rkd_distance_loss, rkd_loss, teacher_anchored_triplet_loss


def _randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _norm(v):
    return math.sqrt(sum(x * x for x in v))


def _smooth_l1(a, b):
    d = abs(a - b)
    return 0.5 * d * d if d < 1.0 else d - 0.5


# ------------------------------------------------------------------------------------------------ hint, cosine, MSE


def test_hint_loss_is_the_mean_squared_error_over_all_elements():
    s, t = _randn(3, 4, 2, 2, seed=1), _randn(3, 4, 2, 2, seed=2)
    total = sum((a - b) ** 2 for a, b in zip(s.flatten().tolist(), t.flatten().tolist()))
    assert hint_loss(s, t).item() == pytest.approx(total / 48, rel=1e-5)
    assert hint_loss(t, t).item() == 0.0


def test_cosine_loss_with_and_without_mask():
    s, t = _randn(2, 4, 5, seed=3), _randn(2, 4, 5, seed=4)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    terms = {}
    for n in range(2):
        for i in range(4):
            a, b = s[n, i].tolist(), t[n, i].tolist()
            terms[n, i] = 1 - sum(x * y for x, y in zip(a, b)) / (_norm(a) * _norm(b))
    assert cosine_loss(s, t).item() == pytest.approx(sum(terms.values()) / 8, rel=1e-5)
    valid = [terms[n, i] for n in range(2) for i in range(4) if mask[n, i]]
    assert cosine_loss(s, t, mask).item() == pytest.approx(sum(valid) / len(valid), rel=1e-5)
    # padded positions do not matter, even non-finite ones
    s2 = s.clone()
    s2[0, 3] = float("nan")
    assert cosine_loss(s2, t, mask.bool()).item() == pytest.approx(sum(valid) / len(valid), rel=1e-5)
    assert cosine_loss(3.0 * t, t).item() == pytest.approx(0.0, abs=1e-6)  # scale-invariant
    assert cosine_loss(s, t, torch.zeros(2, 4)).item() == 0.0


def test_hidden_state_mse_with_mask_averages_over_valid_positions_and_width():
    s, t = _randn(2, 3, 4, seed=5), _randn(2, 3, 4, seed=6)
    mask = torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool)
    total, count = 0.0, 0
    for n in range(2):
        for i in range(3):
            if mask[n, i]:
                total += sum((a - b) ** 2 for a, b in zip(s[n, i].tolist(), t[n, i].tolist()))
                count += 4
    assert hidden_state_mse_loss(s, t, mask).item() == pytest.approx(total / count, rel=1e-5)
    full = sum((a - b) ** 2 for a, b in zip(s.flatten().tolist(), t.flatten().tolist())) / 24
    assert hidden_state_mse_loss(s, t).item() == pytest.approx(full, rel=1e-5)


def test_attention_mse_with_mask_counts_valid_query_key_pairs_only():
    N, H, L = 2, 3, 4
    s, t = _randn(N, H, L, L, seed=7), _randn(N, H, L, L, seed=8)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    # raw scores with -inf at padded keys, as an additive mask leaves them: must not leak
    s[0, :, :, 3] = float("-inf")
    t[1, :, :, 2:] = float("-inf")
    total = 0.0
    for n, h, i, j in itertools.product(range(N), range(H), range(L), range(L)):
        if mask[n, i] and mask[n, j]:
            total += (s[n, h, i, j].item() - t[n, h, i, j].item()) ** 2
    count = H * (3**2 + 2**2)  # TextBrewer: sum over (n, h) of len_n ** 2
    got = attention_mse_loss(s, t, mask)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(total / count, rel=1e-5)


def test_attention_mse_without_mask_zeroes_mask_fill_values():
    s, t = _randn(1, 2, 3, 3, seed=9), _randn(1, 2, 3, 3, seed=10)
    s[..., 2] = -1e4  # TinyBERT-style fill in both maps
    t[..., 2] = -10000.0
    s[0, 0, 0, 0] = -0.5  # a genuinely negative score is kept
    expected = 0.0
    for h, i, j in itertools.product(range(2), range(3), range(3)):
        a = 0.0 if j == 2 else s[0, h, i, j].item()
        b = 0.0 if j == 2 else t[0, h, i, j].item()
        expected += (a - b) ** 2
    assert attention_mse_loss(s, t).item() == pytest.approx(expected / 18, rel=1e-5)


def test_pkd_loss_compares_normalised_vectors():
    s, t = _randn(4, 6, seed=11), _randn(4, 6, seed=12)
    total = 0.0
    for a, b in zip(s.tolist(), t.tolist()):
        na, nb = _norm(a), _norm(b)
        total += sum((x / na - y / nb) ** 2 for x, y in zip(a, b))
    assert pkd_loss(s, t).item() == pytest.approx(total / 4, rel=1e-5)
    assert pkd_loss(5.0 * t, t).item() == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------------------------------------ overhaul


def _overhaul_by_hand(s, t, m):
    """Elementwise loops over (N, C, ...) nested lists, channel dim 1."""
    total = 0.0
    for n in range(s.shape[0]):
        for c in range(s.shape[1]):
            for a, b in zip(s[n, c].flatten().tolist(), t[n, c].flatten().tolist()):
                target = max(b, m[c])
                if a > target or target > 0:
                    total += (a - target) ** 2
    return total / s.shape[0]


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 2)])
def test_overhaul_loss_matches_partial_l2(shape):
    s, t = _randn(*shape, seed=13), _randn(*shape, seed=14)
    m = [-0.3, -1.0, 0.0]
    got = overhaul_loss(s, t, torch.tensor(m))
    assert got.item() == pytest.approx(_overhaul_by_hand(s, t, m), rel=1e-5)
    assert got.item() > 0


def test_overhaul_is_zero_where_student_below_teacher_below_zero_and_positive_when_violated():
    t = -torch.rand(3, 4, 2, 2, generator=torch.Generator().manual_seed(15)) - 0.01  # teacher < 0
    s = t - torch.rand(3, 4, 2, 2, generator=torch.Generator().manual_seed(16))  # student <= teacher
    margin = overhaul_margin_from_features(t)  # <= 0, so T = max(t, m) stays <= 0
    assert (margin <= 0).all()
    assert overhaul_loss(s, t, margin).item() == 0.0
    assert overhaul_loss(t, t, margin).item() == 0.0  # student == teacher <= 0: also no penalty
    # one violation: the student above the target there, and that element alone counts
    s_bad = s.clone()
    s_bad[1, 2, 0, 1] = 0.7
    target = max(t[1, 2, 0, 1].item(), margin[2].item())
    assert overhaul_loss(s_bad, t, margin).item() == pytest.approx((0.7 - target) ** 2 / 3, rel=1e-5)
    # a positive teacher response is matched from both sides
    t_pos = t.clone()
    t_pos[0, 0, 0, 0] = 0.5
    assert overhaul_loss(s, t_pos, margin).item() == pytest.approx((s[0, 0, 0, 0].item() - 0.5) ** 2 / 3, rel=1e-5)


def _margin_by_hand(gamma, beta):
    """get_margin_from_BN, with the normal cdf written through erfc."""
    s = abs(gamma)
    tail = 0.5 * math.erfc(beta / s / math.sqrt(2))  # cdf(-beta / s)
    if tail > 0.001:
        return beta - s * math.exp(-((beta / s) ** 2) / 2) / math.sqrt(2 * math.pi) / tail
    return -3 * s


@pytest.mark.parametrize("gamma,beta", [(1.0, 0.5), (-2.0, 1.0), (0.5, -0.3), (-1.5, -2.0)])
def test_bn_margin_is_the_expectation_of_the_negative_part(gamma, beta):
    m = overhaul_margin_from_bn(torch.tensor([gamma]), torch.tensor([beta]))
    assert m.dtype == torch.float32 and m.shape == (1,)
    x = beta + gamma * torch.randn(2_000_000, generator=torch.Generator().manual_seed(17), dtype=torch.float64)
    monte_carlo = x[x < 0].mean().item()
    assert m.item() == pytest.approx(monte_carlo, abs=5e-3)
    assert m.item() == pytest.approx(_margin_by_hand(gamma, beta), rel=1e-5)


def test_bn_margin_falls_back_to_minus_three_sigma():
    gamma = torch.tensor([1.0, -0.5, 1.0, 2.0])
    beta = torch.tensor([3.5, 2.0, 3.0, -1.0])  # beta/s = 3.5, 4 (cdf < 0.001); 3.0 (cdf 0.00135: analytic); -0.5
    m = overhaul_margin_from_bn(gamma, beta)
    assert m[0].item() == pytest.approx(-3.0)
    assert m[1].item() == pytest.approx(-1.5)
    assert m[2].item() == pytest.approx(_margin_by_hand(1.0, 3.0), rel=1e-5)
    assert m[2].item() != pytest.approx(-3.0, rel=1e-3)
    assert m[3].item() == pytest.approx(_margin_by_hand(2.0, -1.0), rel=1e-5)
    # gamma == 0: a constant response, where the reference divides by zero
    assert overhaul_margin_from_bn(torch.tensor([0.0, 0.0]), torch.tensor([-0.4, 0.3])).tolist() == pytest.approx(
        [-0.4, 0.0]
    )


def test_feature_margin_is_the_per_channel_mean_of_negative_values():
    f = _randn(5, 3, 2, 2, seed=18)
    f[:, 2] = f[:, 2].abs()  # channel 2 never negative -> 0
    expected = []
    for c in range(3):
        neg = [v for v in f[:, c].flatten().tolist() if v < 0]
        expected.append(sum(neg) / len(neg) if neg else 0.0)
    assert overhaul_margin_from_features(f).tolist() == pytest.approx(expected, rel=1e-5)
    # vectors (N, C) too
    v = _randn(7, 4, seed=19)
    expected_v = [sum(x for x in v[:, c].tolist() if x < 0) / sum(x < 0 for x in v[:, c].tolist()) for c in range(4)]
    assert overhaul_margin_from_features(v).tolist() == pytest.approx(expected_v, rel=1e-5)


def test_feature_margin_accumulated_over_batches_equals_one_shot():
    f = _randn(12, 4, 3, 3, seed=20)
    one_shot = overhaul_margin_from_features(f)
    batches = [f[:5], f[5:7], f[7:]]  # unequal batches: a per-batch mean of means would differ
    assert torch.allclose(overhaul_margin_from_features(iter(batches)), one_shot, rtol=1e-6, atol=0)
    stats = None
    for b in batches:
        stats = overhaul_negative_stats(b, stats)
    assert torch.allclose(overhaul_margin_from_stats(stats), one_shot, rtol=1e-6, atol=0)
    assert stats[1].sum().item() == (f < 0).sum().item()
    with pytest.raises(ValueError, match="features"):
        overhaul_margin_from_features(iter([]))
    with pytest.raises(ValueError, match="features"):
        overhaul_negative_stats(_randn(2, 5), stats)


# ------------------------------------------------------------------------------------------------ attention transfer


def _at_by_hand(x):
    """(N, C, H, W) -> per example: mean_c x^2 at each position, divided by its L2 norm."""
    maps = []
    for n in range(x.shape[0]):
        q = [
            sum(x[n, c, i, j].item() ** 2 for c in range(x.shape[1])) / x.shape[1]
            for i in range(x.shape[2])
            for j in range(x.shape[3])
        ]
        maps.append([v / _norm(q) for v in q])
    return maps


def test_attention_transfer_code_and_paper_modes():
    s, t = _randn(2, 3, 2, 3, seed=21), _randn(2, 5, 2, 3, seed=22)  # channel counts differ
    a_s, a_t = _at_by_hand(s), _at_by_hand(t)
    sq = [[(u - v) ** 2 for u, v in zip(rs, rt)] for rs, rt in zip(a_s, a_t)]
    code = sum(map(sum, sq)) / (2 * 6)
    paper = sum(math.sqrt(sum(row)) for row in sq) / 2
    assert attention_transfer_loss(s, t).item() == pytest.approx(code, rel=1e-5)
    assert attention_transfer_loss(s, t, mode="paper").item() == pytest.approx(paper, rel=1e-5)
    # p: |x|^p averaged over channels
    x = _randn(1, 2, 1, 3, seed=23)
    q = [(abs(x[0, 0, 0, j].item()) ** 3 + abs(x[0, 1, 0, j].item()) ** 3) / 2 for j in range(3)]
    assert attention_map(x, p=3)[0].tolist() == pytest.approx([v / _norm(q) for v in q], rel=1e-5)


def test_attention_transfer_is_invariant_to_the_channel_count():
    t = _randn(2, 4, 3, 3, seed=24)
    t2 = torch.cat([t, t], dim=1)  # 2C channels, the same attention
    assert torch.allclose(attention_map(t2), attention_map(t), atol=1e-7)
    assert attention_transfer_loss(t2, t).item() == pytest.approx(0.0, abs=1e-12)
    assert attention_transfer_loss(t2, t, mode="paper").item() == pytest.approx(0.0, abs=1e-6)
    assert attention_transfer_loss(_randn(2, 8, 3, 3, seed=25), t).item() > 1e-4


def test_attention_transfer_refuses_different_spatial_sizes():
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*\(2, 3, 8, 8\)"):
        attention_transfer_loss(s, t)
    with pytest.raises(ValueError, match="mode"):
        attention_transfer_loss(s, s, mode="both")


# ------------------------------------------------------------------------------------------------ relations


def _rkd_distance_by_hand(s, t):
    def normalised(e):
        rows = e.tolist()
        n = len(rows)
        d = [[_norm([a - b for a, b in zip(rows[i], rows[j])]) for j in range(n)] for i in range(n)]
        mu = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return [[v / mu for v in row] for row in d]

    ds, dt = normalised(s), normalised(t)
    n = len(ds)
    return sum(_smooth_l1(ds[i][j], dt[i][j]) for i in range(n) for j in range(n)) / (n * n)


def _rkd_angle_by_hand(s, t):
    def angles(e):
        rows = e.tolist()
        n = len(rows)
        out = {}
        for i, j, k in itertools.product(range(n), repeat=3):
            u = [a - b for a, b in zip(rows[j], rows[i])]
            v = [a - b for a, b in zip(rows[k], rows[i])]
            nu, nv = _norm(u), _norm(v)
            out[i, j, k] = 0.0 if nu == 0 or nv == 0 else sum(a * b for a, b in zip(u, v)) / (nu * nv)
        return out

    a_s, a_t = angles(s), angles(t)
    return sum(_smooth_l1(a_s[key], a_t[key]) for key in a_s) / len(a_s)


def test_rkd_terms_match_their_formulas():
    s, t = _randn(5, 3, seed=26), _randn(5, 7, seed=27, scale=3.0)  # widths differ
    assert rkd_distance_loss(s, t).item() == pytest.approx(_rkd_distance_by_hand(s, t), rel=1e-4)
    assert rkd_angle_loss(s, t).item() == pytest.approx(_rkd_angle_by_hand(s, t), rel=1e-4)
    both = _rkd_distance_by_hand(s, t) + 2.0 * _rkd_angle_by_hand(s, t)
    assert rkd_loss(s, t).item() == pytest.approx(both, rel=1e-4)
    assert rkd_loss(s, t, 0.5, 0.0).item() == pytest.approx(0.5 * _rkd_distance_by_hand(s, t), rel=1e-4)
    # (N, C, H, W) is flattened per example
    f = _randn(4, 2, 2, 2, seed=28)
    assert rkd_distance_loss(f, t[:4]).item() == pytest.approx(_rkd_distance_by_hand(f.flatten(1), t[:4]), rel=1e-4)


@pytest.mark.parametrize("scale", [0.01, 1.0, 7.5])
def test_rkd_is_zero_under_a_positive_rescaling(scale):
    t = _randn(6, 8, seed=29) + 20.0  # a large common offset, as post-ReLU features have
    assert rkd_distance_loss(scale * t, t).item() == pytest.approx(0.0, abs=1e-9)
    assert rkd_angle_loss(scale * t, t).item() == pytest.approx(0.0, abs=1e-9)
    other = _randn(6, 8, seed=30)
    assert rkd_distance_loss(other, t).item() > 1e-3
    assert rkd_angle_loss(other, t).item() > 1e-3


# ------------------------------------------------------------------------------------------------ triplet


def _triplet_by_hand(s, t, labels, margin, ignore=-100):
    s, t, labels = s.tolist(), t.tolist(), labels.tolist()

    def dist(a, b):
        return _norm([x - y for x, y in zip(a, b)])

    losses = []
    for i in range(len(s)):
        if labels[i] == ignore:
            continue
        negatives = [j for j in range(len(s)) if labels[j] not in (labels[i], ignore)]
        if not negatives:
            continue
        d_neg = min(dist(t[i], s[j]) for j in negatives)  # the hardest negative
        losses.append(max(0.0, dist(t[i], s[i]) - d_neg + margin))
    return sum(losses) / len(losses) if losses else 0.0


def test_triplet_loss_matches_formula():
    s, t = _randn(8, 4, seed=31), _randn(8, 4, seed=32)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 3])
    for margin in (0.0, 1.0, 3.0):
        expected = _triplet_by_hand(s, t, labels, margin)
        assert teacher_anchored_triplet_loss(s, t, labels, margin).item() == pytest.approx(expected, rel=1e-5)
    assert teacher_anchored_triplet_loss(s, t, labels, 3.0).item() > 0


def test_triplet_loss_skips_rows_without_a_negative():
    s, t = _randn(5, 3, seed=33), _randn(5, 3, seed=34)
    # rows 1 and 4 are ignored; rows 0, 2 (class 0) and 3 (class 1) still have negatives
    labels = torch.tensor([0, -100, 0, 1, -100])
    expected = _triplet_by_hand(s, t, labels, 2.0)
    assert teacher_anchored_triplet_loss(s, t, labels, 2.0).item() == pytest.approx(expected, rel=1e-5)
    # a batch of one class has no negative at all: 0, and still differentiable
    s.requires_grad_(True)
    loss = teacher_anchored_triplet_loss(s, t, torch.zeros(5, dtype=torch.long), 2.0)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))
    # with a single other-class row, that row is every other row's negative
    labels = torch.tensor([0, 0, 0, 0, 1])
    expected = _triplet_by_hand(s.detach(), t, labels, 2.0)
    assert teacher_anchored_triplet_loss(s, t, labels, 2.0).item() == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------------------ every loss


def _cases():
    """(name, fn(student, teacher), student shape, teacher shape)."""
    margin = torch.tensor([-0.5, -0.2, -1.0])
    labels = torch.tensor([0, 1, 0, 1])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]])
    return [
        ("hint", hint_loss, (4, 3, 2, 2), (4, 3, 2, 2)),
        ("cosine", lambda s, t: cosine_loss(s, t, mask), (4, 3, 5), (4, 3, 5)),
        ("hidden_mse", lambda s, t: hidden_state_mse_loss(s, t, mask), (4, 3, 5), (4, 3, 5)),
        ("attention_mse", lambda s, t: attention_mse_loss(s, t, mask), (4, 2, 3, 3), (4, 2, 3, 3)),
        ("pkd", pkd_loss, (4, 5), (4, 5)),
        ("overhaul", lambda s, t: overhaul_loss(s, t, margin), (4, 3, 2, 2), (4, 3, 2, 2)),
        ("at", attention_transfer_loss, (4, 3, 2, 2), (4, 6, 2, 2)),
        ("at_paper", lambda s, t: attention_transfer_loss(s, t, mode="paper"), (4, 3, 2, 2), (4, 6, 2, 2)),
        ("rkd_distance", rkd_distance_loss, (4, 3), (4, 6)),
        ("rkd_angle", rkd_angle_loss, (4, 3), (4, 6)),
        ("rkd", rkd_loss, (4, 3), (4, 6)),
        ("triplet", lambda s, t: teacher_anchored_triplet_loss(s, t, labels, 10.0), (4, 3), (4, 3)),
    ]


@pytest.mark.parametrize("name,fn,s_shape,t_shape", _cases(), ids=[c[0] for c in _cases()])
def test_gradient_flows_to_student_only(name, fn, s_shape, t_shape):
    s = _randn(*s_shape, seed=35).requires_grad_(True)
    t = _randn(*t_shape, seed=36).requires_grad_(True)
    loss = fn(s, t)
    assert loss.dim() == 0 and loss.dtype == torch.float32
    loss.backward()
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("name,fn,s_shape,t_shape", _cases(), ids=[c[0] for c in _cases()])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_any_float_dtype_is_computed_in_float32(name, fn, s_shape, t_shape, dtype):
    s, t = _randn(*s_shape, seed=37).to(dtype), _randn(*t_shape, seed=38).to(dtype)
    got = fn(s, t)
    assert got.dtype == torch.float32
    # the same values, rounded to `dtype` and back, in float32
    assert got.item() == pytest.approx(fn(s.float(), t.float()).item(), rel=1e-5, abs=1e-6)


def test_gradient_of_the_triplet_positive_is_finite_at_zero_distance():
    t = _randn(4, 3, seed=39)
    s = t.clone().requires_grad_(True)  # ||t_i - s_i|| = 0
    teacher_anchored_triplet_loss(s, t, torch.tensor([0, 1, 0, 1]), margin=100.0).backward()
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda: hint_loss(torch.zeros(2, 3), torch.zeros(2, 4)), "teacher_features"),
        (lambda: cosine_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5)), "teacher"),
        (lambda: cosine_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.ones(2, 4)), "mask"),
        (lambda: hidden_state_mse_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.ones(3, 2)), "mask"),
        (lambda: hidden_state_mse_loss(torch.zeros(2, 3, 4), torch.zeros(2, 4, 4)), "teacher"),
        (lambda: attention_mse_loss(torch.zeros(2, 3, 3), torch.zeros(2, 3, 3)), "student_attn"),
        (lambda: attention_mse_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 1, 3, 3)), "teacher_attn"),
        (lambda: attention_mse_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3), torch.ones(1, 4)), "mask"),
        (lambda: pkd_loss(torch.zeros(2, 3), torch.zeros(2, 4)), "teacher_cls"),
        (lambda: pkd_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)), "student_cls"),
        (lambda: overhaul_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(4)), "margin"),
        (lambda: overhaul_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(3)), "teacher_pre_relu"),
        (lambda: overhaul_loss(torch.zeros(3), torch.zeros(3), torch.zeros(3)), "student"),
        (lambda: overhaul_margin_from_bn(torch.ones(3), torch.zeros(4)), "bias"),
        (lambda: overhaul_margin_from_bn(torch.ones(3, 1), torch.zeros(3, 1)), "weight"),
        (lambda: overhaul_margin_from_features(torch.zeros(5)), "features"),
        (lambda: attention_map(torch.zeros(2, 3)), "fmap"),
        (lambda: attention_transfer_loss(torch.zeros(2, 3), torch.zeros(2, 3, 4, 4)), "student_fmap"),
        (lambda: attention_transfer_loss(torch.zeros(2, 3, 4, 4), torch.zeros(3, 3, 4, 4)), "teacher_fmap"),
        (lambda: rkd_distance_loss(torch.zeros(4, 3), torch.zeros(5, 3)), "teacher"),
        (lambda: rkd_angle_loss(torch.zeros(1, 3), torch.zeros(1, 3)), "student"),
        (lambda: rkd_loss(torch.zeros(4), torch.zeros(4, 2)), "student"),
        (lambda: teacher_anchored_triplet_loss(torch.zeros(4, 3), torch.zeros(4, 5), torch.zeros(4)), "teacher"),
        (lambda: teacher_anchored_triplet_loss(torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(3)), "labels"),
        (lambda: teacher_anchored_triplet_loss(torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(4), -1.0), "margin"),
    ],
)
def test_bad_shapes_raise_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError) as excinfo:
        call()
    assert str(excinfo.value).startswith(name + " ") or f" {name} " in str(excinfo.value)
