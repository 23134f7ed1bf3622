"""Relational distillation losses: the student matches how the teacher relates the examples of a batch to each other
(distances, angles, a teacher-anchored triplet), not the features themselves. Same conventions as
[`hf_kd.losses.feature`] (float32, teacher detached, `ValueError`s naming the argument), whose tensor helpers these
share."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .feature import _EPS, _check_min_dim, _check_same_shape, _flat_rows, _masked_mean, _shape
from .logit import IGNORE_INDEX


def _check_relation_pair(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = _flat_rows(student, "student")
    t = _flat_rows(teacher.detach(), "teacher")
    if s.shape[0] != t.shape[0]:
        raise ValueError(
            f"teacher must have the batch size of student (dimension 0), got student {_shape(student)} and teacher "
            f"{_shape(teacher)}."
        )
    if s.shape[0] < 2:
        raise ValueError(f"student must hold at least 2 examples (a relation needs a pair), got {_shape(student)}.")
    return s, t


def _pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    """`(N, D)` -> `(N, N)` Euclidean distances, 0 on the diagonal.

    The Gram-matrix form of torchdistill's `RKDLoss.pdist` (squared distances clamped at 1e-12 before the square
    root, so no infinite gradient), after centring the rows: distances do not change, and the cancellation in
    `|a|**2 + |b|**2 - 2 a.b` stays small when the features share a large common offset."""
    e = e - e.mean(0, keepdim=True)
    sq = e.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2.0 * (e @ e.t())).clamp(min=_EPS).sqrt()
    eye = torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return torch.where(eye, 0.0, d)


def _normalized_distances(e: torch.Tensor) -> torch.Tensor:
    d = _pairwise_distances(e)
    n = e.shape[0]
    return d / (d.sum() / (n * (n - 1))).clamp(min=_EPS)


def _angles(e: torch.Tensor) -> torch.Tensor:
    """`(N, D)` -> `(N, N, N)`: `[i, j, k] = cos` of the angle between `e_j - e_i` and `e_k - e_i` (0 where either
    difference is zero)."""
    u = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # u[i, j] = unit(e_j - e_i)
    return torch.bmm(u, u.transpose(1, 2))


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD's distance term (Park et al., "Relational Knowledge Distillation", CVPR 2019; torchdistill `RKDLoss`).

    `psi(x_i, x_j) = ||x_i - x_j|| / mu`, `mu` the mean distance over the `N(N-1)` off-diagonal pairs; the loss is
    `smooth_l1(psi_S, psi_T)` (beta 1) averaged over all `N*N` entries (the diagonal, 0 on both sides, included, as
    torchdistill's `reduction="mean"`). Invariant to a rescaling (and translation) of either embedding, so the widths
    may differ and no connector is needed.

    Args:
        student (`torch.Tensor` of shape `(N, D_s)` or `(N, ...)`, flattened per example).
        teacher (`torch.Tensor` of shape `(N, D_t)` or `(N, ...)`): no gradient flows into it.

    Returns:
        A float32 scalar.
    """
    s, t = _check_relation_pair(student, teacher)
    return F.smooth_l1_loss(_normalized_distances(s), _normalized_distances(t))


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD's angle term (Park et al., CVPR 2019; torchdistill `RKDLoss`).

    `psi(x_i, x_j, x_k) = <unit(x_j - x_i), unit(x_k - x_i)>` for every triple (degenerate triples, where a
    difference is zero, give 0 on both sides); the loss is `smooth_l1(psi_S, psi_T)` (beta 1) averaged over all
    `N**3` triples, as torchdistill. Memory `O(N**2 * D + N**3)`. Widths may differ.

    Args and returns as [`rkd_distance_loss`].
    """
    s, t = _check_relation_pair(student, teacher)
    return F.smooth_l1_loss(_angles(s), _angles(t))


def rkd_loss(
    student: torch.Tensor, teacher: torch.Tensor, distance_weight: float = 1.0, angle_weight: float = 2.0
) -> torch.Tensor:
    """RKD: `distance_weight * rkd_distance_loss + angle_weight * rkd_angle_loss` (the paper's and torchdistill's
    weights 1 and 2 by default). A term whose weight is 0 is not computed."""
    s, t = _check_relation_pair(student, teacher)
    loss = s.new_zeros(())
    if distance_weight:
        loss = loss + distance_weight * F.smooth_l1_loss(_normalized_distances(s), _normalized_distances(t))
    if angle_weight:
        loss = loss + angle_weight * F.smooth_l1_loss(_angles(s), _angles(t))
    return loss


def teacher_anchored_triplet_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """A triplet loss anchored on the teacher (after Oki et al., 2020, "Triplet Loss for Knowledge Distillation").

    For example `i`: anchor `a = t_i` (the teacher's embedding of `x_i`), positive `p = s_i` (the student's embedding
    of `x_i`), negative `n = s_j` the student's embedding of an example of another class. The negative is the
    **hardest** one in the batch, the closest to the anchor: `j = argmin_{y_j != y_i} ||t_i - s_j||` (the first such
    `j` on ties), so the loss is deterministic and 0 exactly when every anchor is nearer its own student embedding, by
    `margin`, than any other-class student embedding:

        `mean_{i with a negative} max(0, ||t_i - s_i|| - ||t_i - s_j|| + margin)`

    (Euclidean distances, without `nn.TripletMarginLoss`'s `eps` inside the norm). Rows with no example of another
    class in the batch are skipped (with plain labels that means every row, when the batch has a single class: the
    loss is then 0); rows labelled `ignore_index` are skipped and never serve as negatives. The selection itself
    carries no gradient; the gradient flows into both student embeddings of each triplet.

    Args:
        student (`torch.Tensor` of shape `(N, D)` or `(N, ...)`, flattened per example).
        teacher (`torch.Tensor` of the same shape): the same width is needed, since anchors and students are compared
            directly (project the student first). No gradient flows into it.
        labels (`torch.LongTensor` of shape `(N,)`): the classes.
        margin (`float`): the margin, `>= 0`.
        ignore_index (`int`): a label that takes no part.

    Returns:
        A float32 scalar. Zero when no row has a negative.
    """
    _check_min_dim(student, "student", 2, "(N, D) or (N, ...), one example per row")
    _check_same_shape(student, teacher, "student", "teacher")
    if _shape(labels) != (student.shape[0],):
        raise ValueError(
            f"labels must have shape ({student.shape[0]},) (one class per example of student), got {_shape(labels)}."
        )
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}.")
    s, t = _flat_rows(student, "student"), _flat_rows(teacher.detach(), "teacher")
    labels = labels.to(s.device)
    with torch.no_grad():
        kept = labels != ignore_index
        other = (labels[:, None] != labels[None, :]) & kept[:, None] & kept[None, :]
        has_negative = other.any(1)
        distances = torch.cdist(t, s.detach(), compute_mode="donot_use_mm_for_euclid_dist")
        negative = distances.masked_fill(~other, float("inf")).argmin(1)  # row i with no negative: any index, unused
    d_pos = torch.linalg.vector_norm(t - s, dim=1)
    d_neg = torch.linalg.vector_norm(t - s[negative], dim=1)
    return _masked_mean(F.relu(d_pos - d_neg + margin), has_negative)
