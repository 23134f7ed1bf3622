"""White-box distillation losses: small pure functions of the student's and the teacher's *features* (hidden
states, feature maps, attention maps), beside the logit losses of [`hf_kd.losses.logit`]. Every function takes plain tensors
(the caller picks the layers and applies any connector it trains), computes in float32, lets gradient flow into the
student's argument only, and raises a `ValueError` naming the argument on bad shapes. Normalisations follow the
reference implementations named in each docstring; a factor a reference keeps in its training script is left to the
caller's weight, and the docstring says which."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

AT_MODES = ("code", "paper")

# TinyBERT's task_distill.py zeroes attention-score entries at or below this value: the additive mask fills padded
# keys with -1e4 (or the dtype's minimum, or -inf), which would otherwise dominate an MSE over raw scores.
ATTENTION_FILL_THRESHOLD = -1e2

_EPS = 1e-12


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _f32(x: torch.Tensor) -> torch.Tensor:
    """`x` in float32; the tensor itself when it already is."""
    return x if x.dtype == torch.float32 else x.float()


def _teacher(x: torch.Tensor) -> torch.Tensor:
    """A teacher tensor: detached, float32."""
    return _f32(x.detach())


def _shape(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_b} must have the shape of {name_a}, got {name_a} {_shape(a)} and {name_b} {_shape(b)}."
        )


def _check_min_dim(x: torch.Tensor, name: str, min_dim: int, layout: str) -> None:
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimensions {layout}, got shape {_shape(x)}.")


def _check_dim(x: torch.Tensor, name: str, dim: int, layout: str) -> None:
    if x.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimensions {layout}, got shape {_shape(x)}.")


def _check_mask(mask: torch.Tensor, expected: tuple[int, ...], what: str) -> torch.Tensor:
    """`mask` as a bool tensor, after checking it has the shape `expected`."""
    if _shape(mask) != expected:
        raise ValueError(f"mask must have shape {expected} ({what}), got {_shape(mask)}.")
    return mask if mask.dtype == torch.bool else mask != 0


def _masked_mean(per_position: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of `per_position` over the positions where `mask` is True (0 when there is none).

    `where` (not a multiplication) keeps a NaN or inf at a masked position out of the result and its gradient, and
    the weights keep the shapes static (no host-device sync)."""
    if mask is None:
        return per_position.mean()
    weights = mask / mask.sum().clamp(min=1)
    return (torch.where(mask, per_position, 0.0) * weights).sum()


def _flat_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    """`(N, ...)` -> `(N, D)` float32 rows (an example per row)."""
    _check_min_dim(x, name, 2, "(N, D) or (N, ...), one example per row")
    return _f32(x.flatten(1) if x.dim() > 2 else x)


# ----------------------------------------------------------------------------------------------------------------
# feature (hint) matching


def hint_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """FitNets' hint loss (Romero et al., ICLR 2015): the mean squared error between the student's features, already
    passed through the caller's connector (the "regressor" `r`), and the teacher's.

    `mean((r(v_S) - u_T)**2)`, averaged over **all elements** (batch included): `F.mse_loss(..., reduction="mean")`.

    Normalisation: the paper writes `1/2 * ||u_T - r(v_S)||**2` (a sum), and torchdistill's sample FitNet configs
    (`configs/sample/ilsvrc2012/fitnet/*.yaml`) use `MSELoss(reduction="sum")`. The mean is used here so that the
    scale of the loss, hence a sensible weight, does not depend on the batch size or the feature size; multiply the
    weight by `numel / 2` (paper) or `numel` (torchdistill's sum) to reproduce theirs.

    Args:
        student_features (`torch.Tensor` of any shape): `r(student features)`, shaped like the teacher's.
        teacher_features (`torch.Tensor` of the same shape): the teacher's features (no gradient flows into them).

    Returns:
        A float32 scalar.
    """
    _check_same_shape(student_features, teacher_features, "student_features", "teacher_features")
    return F.mse_loss(_f32(student_features), _teacher(teacher_features))


def hidden_state_mse_loss(
    student_projected: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """TinyBERT's hidden-state loss (Jiao et al., 2020): `MSE(H_S W, H_T)`, the projection `W` applied by the caller.

    `sum_{valid positions} sum_d (s - t)**2 / (n_valid * D)`: the mean squared error over the valid positions and the
    hidden dimension, as TextBrewer's `hid_mse_loss` (and, without a mask, `F.mse_loss`).

    Args:
        student_projected (`torch.Tensor` of shape `(..., D)`, e.g. `(N, L, D)`): the student's hidden states,
            projected to the teacher's width.
        teacher (`torch.Tensor` of shape `(..., D)`): the teacher's hidden states (no gradient flows into them).
        mask (`torch.Tensor` of shape `(...)`, e.g. the `(N, L)` attention mask, *optional*): nonzero/True where a
            position counts (padding left out).

    Returns:
        A float32 scalar. Zero when no position is valid.
    """
    _check_min_dim(student_projected, "student_projected", 1, "(..., D)")
    _check_same_shape(student_projected, teacher, "student_projected", "teacher")
    if mask is not None:
        mask = _check_mask(mask, _shape(student_projected)[:-1], "the hidden states without their last dimension")
    per_position = (_f32(student_projected) - _teacher(teacher)).pow(2).mean(-1)
    return _masked_mean(per_position, mask)


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """DistilBERT's hidden-state cosine loss (Sanh et al., 2019): `1 - cos(s, t)` over the last dimension, averaged
    over the (valid) positions.

    `mean_{valid positions} (1 - <s, t> / (max(|s|, eps) * max(|t|, eps)))`, `eps = 1e-8`. DistilBERT selects the
    non-padded positions and applies `nn.CosineEmbeddingLoss(reduction="mean")` with target 1: the same value.
    Scale-invariant per position, so student and teacher norms need not match (the widths must: project first if
    they differ).

    Args:
        student (`torch.Tensor` of shape `(..., D)`, e.g. `(N, L, D)`).
        teacher (`torch.Tensor` of shape `(..., D)`): no gradient flows into it.
        mask (`torch.Tensor` of shape `(...)`, e.g. `(N, L)`, *optional*): nonzero/True where a position counts.

    Returns:
        A float32 scalar in `[0, 2]`. Zero when no position is valid.
    """
    _check_min_dim(student, "student", 1, "(..., D)")
    _check_same_shape(student, teacher, "student", "teacher")
    if mask is not None:
        mask = _check_mask(mask, _shape(student)[:-1], "the hidden states without their last dimension")
    per_position = 1.0 - F.cosine_similarity(_f32(student), _teacher(teacher), dim=-1, eps=1e-8)
    return _masked_mean(per_position, mask)


# ----------------------------------------------------------------------------------------------------------------
# Overhaul of feature distillation (Heo et al., ICCV 2019)


def overhaul_margin_from_bn(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The per-channel margin of Heo et al.'s overhaul distillation, from the BatchNorm that precedes the ReLU.

    The BN output of channel `c` is modelled as `x ~ N(beta, gamma**2)`; the margin is the expectation of its
    negative responses, `E[x | x < 0]`:

        `s = |gamma|`,  `m = beta - s * pdf(beta / s) / cdf(-beta / s)`,

    and `m = -3 s` where `cdf(-beta / s) <= 0.001` (the responses are almost never negative: the formula would divide
    by a vanishing probability). As `get_margin_from_BN` in clovaai/overhaul-distillation (`CIFAR-100/distiller.py`).
    A channel with `gamma == 0` (constant output `beta`, where the reference divides by zero) gets `min(beta, 0)`:
    `beta` when its response is negative, else the `-3 s = 0` limit.

    Args:
        weight (`torch.Tensor` of shape `(C,)`): the BN's `gamma` (`bn.weight`).
        bias (`torch.Tensor` of shape `(C,)`): the BN's `beta` (`bn.bias`).

    Returns:
        A float32 `(C,)` tensor, detached (a constant target, like the reference's buffer). Every entry is `<= 0`.
    """
    _check_dim(weight, "weight", 1, "(C,) (the BatchNorm's gamma)")
    _check_same_shape(weight, bias, "weight", "bias")
    with torch.no_grad():
        # float64 on the CPU (a one-off (C,) computation; MPS has no float64), as the reference's Python floats: near
        # the -3s branch, `beta - s * pdf / cdf` cancels to a small number, and float32 would keep only ~4 digits.
        s = weight.detach().cpu().double().abs()
        beta = bias.detach().cpu().double()
        z = beta / s
        tail = torch.special.ndtr(-z)  # P(x < 0)
        pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
        margin = torch.where(tail > 1e-3, beta - s * pdf / tail, -3.0 * s)
        margin = torch.where(s == 0, beta.clamp(max=0.0), margin)
        return margin.to(device=weight.device, dtype=torch.float32)


def overhaul_negative_stats(
    features: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel running statistics of the negative responses, for [`overhaul_margin_from_features`].

    Returns `(sum, count)`: the sum (float64) and the number (int64) of the negative entries of each channel
    (dimension 1) of `features`, added to `stats` when given (a new pair is returned; `stats` is not modified). Feed
    it every batch of a pass over the training set (one call per layer per batch, so one teacher pass serves all
    layers), then call [`overhaul_margin_from_stats`]. Under data parallelism, all-reduce (sum) both tensors first.

    Args:
        features (`torch.Tensor` of shape `(N, C)` or `(N, C, *spatial)`): the teacher's **pre-ReLU** features.
        stats (`(sum, count)`, *optional*): the statistics so far, as returned by a previous call.
    """
    _check_min_dim(features, "features", 2, "(N, C) or (N, C, *spatial), channels in dimension 1")
    with torch.no_grad():
        f = _f32(features.detach())
        dims = [d for d in range(f.dim()) if d != 1]
        total = f.clamp(max=0.0).sum(dim=dims).double()  # float32 per batch, accumulated in float64 across batches
        count = (f < 0).sum(dim=dims)
        if stats is None:
            return total, count
        prev_total, prev_count = stats
        if prev_total.shape != total.shape or prev_count.shape != count.shape:
            raise ValueError(
                f"features has {total.numel()} channels but stats were accumulated over "
                f"{prev_total.numel()}: every batch of a layer must have the same channels (dimension 1)."
            )
        return prev_total.to(total.device) + total, prev_count.to(count.device) + count


def overhaul_margin_from_stats(stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The margin from [`overhaul_negative_stats`]: `sum / count` per channel, 0 for a channel with no negative
    response. A float32 `(C,)` tensor."""
    total, count = stats
    if total.shape != count.shape or total.dim() != 1:
        raise ValueError(
            f"stats must be a (sum, count) pair of (C,) tensors, got shapes {_shape(total)} and {_shape(count)}."
        )
    return torch.where(count > 0, total / count.clamp(min=1), 0.0).float()


def overhaul_margin_from_features(features: torch.Tensor | Iterable[torch.Tensor]) -> torch.Tensor:
    """The overhaul margin of a teacher **without BatchNorm**: the mean of the negative pre-ReLU responses per channel.

    `m_c = sum_{x in channel c, x < 0} x / #{x in channel c : x < 0}`, over every example and spatial position: the
    empirical `E[x | x < 0]` that [`overhaul_margin_from_bn`] computes under a Gaussian model (the author's advice
    for BN-free teachers, clovaai/overhaul-distillation issue #7). A channel that never responds negatively gets
    `m = 0`: its target `max(F_t, 0)` is then the teacher's post-ReLU response, and the partial L2 only penalises
    student responses above it where the teacher is at 0.

    Args:
        features (`torch.Tensor` of shape `(N, C)` or `(N, C, *spatial)`, or an iterable of such tensors, e.g. a
            generator over the batches of a dataset): the teacher's pre-ReLU features, channels in dimension 1. An
            iterable is consumed once, accumulating `(sum, count)` as [`overhaul_negative_stats`] (use that directly to
            collect several layers in one pass).

    Returns:
        A float32 `(C,)` tensor, every entry `<= 0`.
    """
    if isinstance(features, torch.Tensor):
        return overhaul_margin_from_stats(overhaul_negative_stats(features))
    stats = None
    for batch in features:
        if not isinstance(batch, torch.Tensor):
            raise TypeError(f"features must be a tensor or an iterable of tensors, got an item of type {type(batch)}.")
        stats = overhaul_negative_stats(batch, stats)
    if stats is None:
        raise ValueError("features is an empty iterable: the margin needs at least one batch.")
    return overhaul_margin_from_stats(stats)


def overhaul_loss(student: torch.Tensor, teacher_pre_relu: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """The partial L2 distance of Heo et al.'s overhaul distillation (ICCV 2019; clovaai/overhaul-distillation,
    `distillation_loss` in `CIFAR-100/distiller.py`).

    With the teacher target `T = max(F_t, m)` (the margin `m` broadcast per channel) and `S` the student's
    connector output:

        `sum_{n, c, ...} (S - T)**2 * 1[(S > T) or (T > 0)] / N`

    i.e. no penalty where `S <= T <= 0`: below the teacher's ReLU threshold only the sign matters. Normalisation: the
    reference sums over the batch and divides by the batch size `N` in its training script; it also divides the total
    by 1000 (`loss_CE + loss_distill.sum() / batch_size / 1000`) and weights pair `i` of `n` by `1 / 2**(n - i - 1)`:
    both are left to the caller's weight.

    Args:
        student (`torch.Tensor` of shape `(N, C)` or `(N, C, *spatial)`): `r(F_s)`, the student's features through its
            connector (1x1 conv + BN, or Linear + BN1d), taken before the ReLU.
        teacher_pre_relu (`torch.Tensor` of the same shape): the teacher's pre-ReLU features `F_t` (no gradient).
        margin (`torch.Tensor` of shape `(C,)`): from [`overhaul_margin_from_bn`] or [`overhaul_margin_from_features`].

    Returns:
        A float32 scalar.
    """
    _check_min_dim(student, "student", 2, "(N, C) or (N, C, *spatial), channels in dimension 1")
    _check_same_shape(student, teacher_pre_relu, "student", "teacher_pre_relu")
    channels = student.shape[1]
    if margin.dim() != 1 or margin.shape[0] != channels:
        raise ValueError(
            f"margin must have shape ({channels},) (one value per channel of student, dimension 1), got "
            f"{_shape(margin)}."
        )
    s = _f32(student)
    m = _teacher(margin).to(s.device).view((1, channels) + (1,) * (s.dim() - 2))
    target = torch.maximum(_teacher(teacher_pre_relu), m)
    keep = (s > target) | (target > 0)
    return torch.where(keep, (s - target).pow(2), 0.0).sum() / s.shape[0]


# ----------------------------------------------------------------------------------------------------------------
# attention transfer (Zagoruyko & Komodakis, ICLR 2017)


def attention_map(fmap: torch.Tensor, p: float = 2) -> torch.Tensor:
    """The spatial attention map of attention transfer: `normalize(mean_c |x_c|**p)`, flattened and L2-normalised
    per example.

    `at(x) = F.normalize(x.abs().pow(p).mean(1).flatten(1))` (szagoruyko/attention-transfer `utils.at`, which writes
    `x.pow(2)`: the same for `p = 2`; the absolute value is the paper's `F(A) = sum_c |A_c|**p`, for odd `p`). The
    mean over channels (the paper sums) makes no difference after the normalisation, and makes the map independent of
    the channel count: repeating the channels leaves it unchanged.

    Args:
        fmap (`torch.Tensor` of shape `(N, C, *spatial)`).
        p (`float`): the exponent, `> 0`.

    Returns:
        A float32 `(N, prod(spatial))` tensor, each row of unit L2 norm (or zero for an all-zero map).
    """
    _check_min_dim(fmap, "fmap", 3, "(N, C, *spatial)")
    if not p > 0:
        raise ValueError(f"p must be > 0, got {p}.")
    return F.normalize(_f32(fmap).abs().pow(p).mean(1).flatten(1), dim=1)


def attention_transfer_loss(
    student_fmap: torch.Tensor, teacher_fmap: torch.Tensor, p: float = 2, mode: str = "code"
) -> torch.Tensor:
    """Attention transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017).

    With `at` the [`attention_map`] (per-example L2-normalised spatial map):

    - `mode="code"` (the authors' `utils.at_loss`, and torchdistill's `ATLoss` default): `mean((at(s) - at(t))**2)`,
      the squared difference averaged over the batch **and** the `H*W` positions. The authors' `cifar.py` adds
      `beta * sum_j at_loss_j` with `beta = 1e3`: use a weight of 1e3 to reproduce their runs.
    - `mode="paper"` (torchdistill's `ATLoss(mode="paper")`): `mean_n ||at(s)_n - at(t)_n||_2`, the (not squared)
      L2 distance per example, averaged over the batch. The paper's Eq. 2 adds `beta/2 * sum_j` of it: the factor
      1/2, the sum over pairs and `beta` are left to the caller's weight. (Their `beta` "about 0.1, 1e3 divided by the
      number of elements in the attention map and the batch size" describes the code's mean; see
      szagoruyko/attention-transfer issue #34 on the discrepancy.)

    Only the spatial sizes must agree: the channel counts may differ (no connector needed).

    Args:
        student_fmap (`torch.Tensor` of shape `(N, C_s, *spatial)`).
        teacher_fmap (`torch.Tensor` of shape `(N, C_t, *spatial)`): no gradient flows into it.
        p (`float`): the exponent of the attention map (2 in the paper's experiments).
        mode (`str`): `"code"` or `"paper"`.

    Returns:
        A float32 scalar.
    """
    if mode not in AT_MODES:
        raise ValueError(f"mode must be one of {AT_MODES}, got {mode!r}.")
    _check_min_dim(student_fmap, "student_fmap", 3, "(N, C, *spatial)")
    _check_min_dim(teacher_fmap, "teacher_fmap", 3, "(N, C, *spatial)")
    if student_fmap.shape[0] != teacher_fmap.shape[0] or student_fmap.shape[2:] != teacher_fmap.shape[2:]:
        raise ValueError(
            "teacher_fmap must have the batch size and spatial size of student_fmap (channels may differ), got "
            f"student_fmap {_shape(student_fmap)} and teacher_fmap {_shape(teacher_fmap)}."
        )
    diff = attention_map(student_fmap, p) - attention_map(teacher_fmap.detach(), p)
    if mode == "code":
        return diff.pow(2).mean()
    return torch.linalg.vector_norm(diff, dim=1).mean()


# ----------------------------------------------------------------------------------------------------------------
# transformers: attention maps and [CLS]


def attention_mse_loss(
    student_attn: torch.Tensor, teacher_attn: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """TinyBERT's attention loss (Jiao et al., 2020): the MSE between attention maps (scores or probabilities) of
    matched layers, with the same number of heads.

    - With `mask` (TextBrewer's `att_mse_loss`): only the entries `(n, h, i, j)` whose query `i` and key `j` are both
      valid count: `sum_valid (s - t)**2 / (H * sum_n len_n**2)`, `len_n` the number of valid positions of example `n`.
      Entries at padded positions never enter the sum (even when they are `-inf`).
    - Without a mask: `F.mse_loss` over all entries, after zeroing every entry `<= -1e2` in each map (TinyBERT's
      `task_distill.py`): the additive attention mask's fill value (-1e4, the dtype's minimum or -inf) in raw scores.
      TextBrewer zeroes entries `<= -1e-3` instead, which also discards legitimately negative scores; probabilities
      are never negative, so either rule leaves them unchanged. Prefer passing the mask: with probabilities, the rows
      of padded queries are otherwise compared too.

    Args:
        student_attn (`torch.Tensor` of shape `(N, H, L, L)`).
        teacher_attn (`torch.Tensor` of shape `(N, H, L, L)`): no gradient flows into it.
        mask (`torch.Tensor` of shape `(N, L)`, *optional*): the attention mask, nonzero/True at real tokens.

    Returns:
        A float32 scalar. Zero when no position is valid.
    """
    _check_dim(student_attn, "student_attn", 4, "(N, H, L, L)")
    _check_same_shape(student_attn, teacher_attn, "student_attn", "teacher_attn")
    s, t = _f32(student_attn), _teacher(teacher_attn)
    if mask is None:
        s = torch.where(s <= ATTENTION_FILL_THRESHOLD, 0.0, s)
        t = torch.where(t <= ATTENTION_FILL_THRESHOLD, 0.0, t)
        return F.mse_loss(s, t)
    n, _, lq, lk = student_attn.shape
    if lq != lk:
        raise ValueError(f"student_attn must be self-attention maps (N, H, L, L) to use a mask, got {_shape(s)}.")
    mask = _check_mask(mask, (n, lq), "the attention mask of the (N, H, L, L) maps")
    valid = (mask[:, :, None] & mask[:, None, :])[:, None]  # (N, 1, L, L): query and key both real
    count = valid.sum() * student_attn.shape[1]
    return torch.where(valid, (s - t).pow(2), 0.0).sum() / count.clamp(min=1)


def pkd_loss(student_cls: torch.Tensor, teacher_cls: torch.Tensor) -> torch.Tensor:
    """Patient KD (Sun et al., 2019): the MSE between the L2-normalised [CLS] vectors of matched layers.

    `mean_n sum_d (s_n / |s_n| - t_n / |t_n|)**2` (TextBrewer's `pkd_loss`: summed over the hidden dimension, averaged
    over the batch). Since each vector is normalised, this is `2 - 2 cos(s_n, t_n)` averaged over the batch.

    The vectors must have the same width: PKD's student shares the teacher's hidden size; otherwise project the
    student's vector first (TextBrewer's `proj`). It needs no common tokenizer: only one vector per example is
    compared, not token positions. Select that vector yourself (`hidden_states[:, 0]` for BERT-style [CLS]).

    Args:
        student_cls (`torch.Tensor` of shape `(N, D)`).
        teacher_cls (`torch.Tensor` of shape `(N, D)`): no gradient flows into it.

    Returns:
        A float32 scalar in `[0, 4]`.
    """
    _check_dim(student_cls, "student_cls", 2, "(N, D): one [CLS] vector per example")
    if student_cls.shape != teacher_cls.shape:
        raise ValueError(
            f"teacher_cls must have the shape of student_cls (N, D) (PKD compares vectors of equal width: project the "
            f"student's first), got student_cls {_shape(student_cls)} and teacher_cls {_shape(teacher_cls)}."
        )
    s = F.normalize(_f32(student_cls), dim=-1)
    t = F.normalize(_teacher(teacher_cls), dim=-1)
    return (s - t).pow(2).sum(-1).mean()
