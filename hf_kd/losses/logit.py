"""Distillation losses: small pure functions of tensors.

Every function takes logits of shape `(..., C)` (any number of leading dimensions, so the same code serves
sequence classification `(N, C)` and token classification `(N, L, C)`), works in float32 whatever the input dtype
(bf16/fp16 logits lose too much precision in a softmax over a temperature), and averages over the *valid examples*:
the positions whose label is not `-100`, or all positions when no mask is given.

The soft-target term follows Hinton et al. (2015), "Distilling the Knowledge in a Neural Network": both
distributions are softened by a temperature `T`, and the divergence is multiplied by `T**2` so that its gradient
keeps the same magnitude as the hard-label term's when `T` changes.

These run on every training step, on tensors as small as `(64, 10)`, where each op costs a dispatch rather than
arithmetic: the helpers avoid no-op conversions, and [`distillation_loss`] computes the valid-row weights once for
both terms.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from .divergence import generalized_jsd_rows
from .partial import answer_loss

IGNORE_INDEX = -100

SOFT_LOSS_TYPES = ("kl", "reverse_kl", "mse", "jsd")


def _rows(logits: torch.Tensor) -> torch.Tensor:
    """`(..., C)` logits -> `(M, C)` float32 rows; the tensor itself when it already is one."""
    if logits.dim() != 2:
        logits = logits.reshape(-1, logits.shape[-1])
    return logits if logits.dtype == torch.float32 else logits.float()


def _valid_weights(mask: torch.Tensor) -> torch.Tensor:
    """`(M,)` float32 weights: `1 / n_valid` on the rows where `mask` is True, 0 elsewhere."""
    return mask / mask.sum().clamp(min=1)


def _mean_over_valid(
    per_row: torch.Tensor, mask: torch.Tensor | None, scale: float = 1.0, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """`scale` times the mean of a per-row value over the rows where `mask` is True (0 when there is none).

    One `dot` with the [`_valid_weights`] (passed in when the caller already has them). Masking by `where` keeps
    the shapes static (no host-device sync) and stops a NaN at a masked position from leaking into the result."""
    if mask is None:
        mean = per_row.mean()
        return mean * scale if scale != 1.0 else mean
    mask = mask.reshape(-1)
    weights = _valid_weights(mask) if weights is None else weights
    return torch.dot(torch.where(mask, per_row, 0.0), weights * scale if scale != 1.0 else weights)


def _check_pair(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits and teacher_logits must have the same shape, got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_logits.shape)}."
        )


def _kl_rows(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """`KL(softmax(p / T) || softmax(q / T))` per row. log_softmax subtracts the row max, so logits of magnitude 1e4
    stay finite."""
    log_p = F.log_softmax(_rows(p_logits) / temperature, dim=-1)
    log_q = F.log_softmax(_rows(q_logits) / temperature, dim=-1)
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)


def _soft_rows(
    loss_type: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, beta: float = 0.5
) -> tuple[torch.Tensor, float]:
    """The per-row soft term named by `loss_type`, and the factor its mean is scaled by (`T**2` for the KLs; 1 for
    the JSD, as in TRL's GKD)."""
    teacher_logits = teacher_logits.detach()
    if loss_type == "jsd":
        student_log_probs = F.log_softmax(_rows(student_logits) / temperature, dim=-1)
        teacher_log_probs = F.log_softmax(_rows(teacher_logits) / temperature, dim=-1)
        return generalized_jsd_rows(student_log_probs, teacher_log_probs, beta), 1.0
    if loss_type == "kl":
        return _kl_rows(teacher_logits, student_logits, temperature), temperature**2
    if loss_type == "reverse_kl":
        return _kl_rows(student_logits, teacher_logits, temperature), temperature**2
    if loss_type == "mse":
        return (_rows(student_logits) - _rows(teacher_logits)).pow(2).mean(-1), 1.0
    raise ValueError(f"loss_type must be one of {SOFT_LOSS_TYPES}, got {loss_type!r}.")


def _hard_rows(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row cross-entropy in float32 (0 on ignored rows), and the labels flattened to match."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"labels must have the shape of the logits without their last dimension, got logits "
            f"{tuple(logits.shape)} and labels {tuple(labels.shape)}."
        )
    flat_labels = labels.reshape(-1) if labels.dim() != 1 else labels
    flat_labels = flat_labels if flat_labels.dtype == torch.long else flat_labels.long()
    return F.cross_entropy(_rows(logits), flat_labels, ignore_index=ignore_index, reduction="none"), flat_labels


def soft_target_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hinton et al.'s soft-target term.

    `T**2 * KL(softmax(t / T) || softmax(s / T))`, summed over classes and averaged over the valid positions
    (`reduction="batchmean"` over the rows selected by `mask`).

    Args:
        student_logits (`torch.Tensor` of shape `(..., C)`): the student's logits.
        teacher_logits (`torch.Tensor` of shape `(..., C)`): the teacher's logits (no gradient flows into them).
        temperature (`float`): the softening temperature `T > 0`.
        mask (`torch.BoolTensor` of shape `(...)`, *optional*): True where a position counts.

    Returns:
        A float32 scalar. Zero when there is no valid position.
    """
    return soft_loss("kl", student_logits, teacher_logits, temperature, mask)


def reverse_kl_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mode-seeking variant: `T**2 * KL(softmax(s / T) || softmax(t / T))`, averaged over valid positions.

    Shapes and arguments as in [`soft_target_loss`].
    """
    return soft_loss("reverse_kl", student_logits, teacher_logits, temperature, mask)


def logit_mse_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logit matching (Ba & Caruana, 2014): `sum_c (s_c - t_c)**2 / C`, averaged over valid positions.

    `temperature` is accepted so that every soft loss has the same signature, and ignored: matching raw logits is the
    high-temperature limit of the KL term.
    """
    return soft_loss("mse", student_logits, teacher_logits, temperature, mask)


def soft_loss(
    loss_type: str,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    beta: float = 0.5,
) -> torch.Tensor:
    """The soft term named by `loss_type`: `"kl"` ([`soft_target_loss`]), `"reverse_kl"`, `"mse"` or `"jsd"` (TRL's
    generalized JSD of the tempered distributions, with `beta`; see [`hf_kd.losses.divergence`])."""
    _check_pair(student_logits, teacher_logits)
    per_row, scale = _soft_rows(loss_type, student_logits, teacher_logits, temperature, beta)
    return _mean_over_valid(per_row, mask, scale)


def hard_label_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy against the ground-truth labels, in float32, averaged over labels that are not `ignore_index`
    (0 when there is none, where torch's mean would give NaN).

    Args:
        logits (`torch.Tensor` of shape `(..., C)`).
        labels (`torch.LongTensor` of shape `(...)`).
    """
    per_row, flat_labels = _hard_rows(logits, labels, ignore_index)
    return torch.dot(per_row, _valid_weights(flat_labels != ignore_index))


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor | None,
    temperature: float = 1.0,
    alpha: float = 0.5,
    loss_type: str = "kl",
    ignore_index: int = IGNORE_INDEX,
    beta: float = 0.5,
    teacher_answers: Mapping[str, torch.Tensor] | None = None,
    top_k_loss: str = "tail",
) -> dict[str, torch.Tensor]:
    """The logit-distillation objective, the one definition every other place refers to:

        loss = (1 - alpha) * CE(s, labels) + alpha * soft(s, t)

    with `soft` the term named by `loss_type`; for `"kl"`, Hinton et al.'s
    `T**2 * KL(softmax(t / T) || softmax(s / T))`, averaged over the valid examples (`batchmean`); for `"jsd"`, TRL's
    generalized JSD with `beta` (no `T**2`). `alpha` is the weight of the teacher's term. Positions labelled
    `ignore_index` are left out of both terms. With `labels=None` the objective must be pure distillation
    (`alpha == 1`); the soft term then covers every position.

    A black-box teacher gives `teacher_answers` instead of `teacher_logits` (probabilities, top-k or labels, see
    [`hf_kd.losses.partial`]; `top_k_loss` picks how a top-k answer is compared). Its answers are per example, so
    its term covers every example, labelled or not: the unlabelled ones (label `ignore_index`) are a transfer set,
    taught by the teacher alone.

    Returns:
        `dict[str, torch.Tensor]`: `"loss"`, the weighted total, and the unweighted terms by name: `"ce"` (absent
        without labels) and `"kd"`. A trainer logs every term as `loss_<name>`.
    """
    if labels is None and alpha != 1.0:
        raise ValueError(f"labels are required when alpha < 1 (alpha={alpha}): the hard-label term needs them.")
    if teacher_answers is not None:
        soft = answer_loss(student_logits, teacher_answers, loss_type, beta, top_k_loss)
        if labels is None:
            return {"loss": soft, "kd": soft}
        hard = hard_label_loss(student_logits, labels, ignore_index)
        total = hard if alpha == 0.0 else soft if alpha == 1.0 else torch.lerp(hard, soft, alpha)
        return {"loss": total, "ce": hard, "kd": soft}
    if teacher_logits is None:
        raise ValueError("distillation_loss needs teacher_logits or teacher_answers.")
    if labels is None:
        soft = soft_loss(loss_type, student_logits, teacher_logits, temperature, beta=beta)
        return {"loss": soft, "kd": soft}
    _check_pair(student_logits, teacher_logits)
    hard_rows, flat_labels = _hard_rows(student_logits, labels, ignore_index)
    mask = flat_labels != ignore_index
    weights = _valid_weights(mask)  # shared by both terms
    hard = torch.dot(hard_rows, weights)  # exactly `hard_label_loss`
    soft_rows, scale = _soft_rows(loss_type, student_logits, teacher_logits, temperature, beta)
    soft = _mean_over_valid(soft_rows, mask, scale, weights)  # exactly `soft_loss(..., mask=labels != ignore_index)`
    # Exact endpoints: alpha=0 is plain CE and alpha=1 plain distillation, bit for bit.
    total = hard if alpha == 0.0 else soft if alpha == 1.0 else torch.lerp(hard, soft, alpha)
    return {"loss": total, "ce": hard, "kd": soft}


def mutual_learning_loss(
    peer_logits: list[torch.Tensor],
    labels: torch.Tensor,
    temperature: float = 1.0,
    kl_weight: float = 1.0,
    loss_type: str = "kl",
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, torch.Tensor]:
    """Deep mutual learning (Zhang et al., 2018): each of K >= 2 peers learns from the labels and from the others.

        loss_k = CE(y, p_k) + kl_weight * 1/(K-1) * sum_{l != k} soft(p_k, p_l)

    with `soft` the term of [`soft_loss`] (for `"kl"`: `T**2 * KL(softmax(p_l / T) || softmax(p_k / T))`) and the
    other peers' logits `p_l` taken as constants (no gradient flows into them through peer k's loss). Positions
    labelled `ignore_index` are left out of both terms.

    Returns:
        `dict[str, torch.Tensor]`: `"loss"`, the sum of the peers' losses (the peers share no parameter, so each
        peer's gradient is its own loss's), and each peer's unweighted terms `"ce_<k>"` and `"kl_<k>"`.
    """
    if len(peer_logits) < 2:
        raise ValueError(f"mutual learning needs at least 2 peers, got {len(peer_logits)}.")
    mask = labels.reshape(-1) != ignore_index
    terms, total = {}, 0.0
    for k, logits in enumerate(peer_logits):
        others = [other.detach() for index, other in enumerate(peer_logits) if index != k]
        terms[f"ce_{k}"] = hard_label_loss(logits, labels, ignore_index)
        terms[f"kl_{k}"] = sum(soft_loss(loss_type, logits, other, temperature, mask) for other in others) / len(others)
        total = total + terms[f"ce_{k}"] + (kl_weight * terms[f"kl_{k}"] if kl_weight else 0.0)
    return {"loss": total, **terms}
