"""Divergences between two distributions given as log-probabilities over the same categories, per row.

Pure functions of `(M, K)` float tensors: `student_log_probs` (finite, from a `log_softmax`) and
`teacher_log_probs` (`-inf` where the teacher gives a category probability 0: a label-only answer, a top-k answer
renormalised on its support). A category the teacher gives 0 adds nothing to `KL(teacher || .)` (`0 log 0 = 0`),
where `F.kl_div` would return NaN.

[`generalized_jsd_rows`] is TRL's `GKDTrainer.generalized_jsd_loss` as of TRL 1.16.0
(`trl/experimental/gkd/gkd_trainer.py`), per row and without its reduction.
"""

from __future__ import annotations

import torch

DIVERGENCES = ("kl", "reverse_kl", "jsd")


def _xlogy_log(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """`p * (log p - log q)` elementwise, 0 where `p == 0` (`log_p == -inf`), with no NaN in value or gradient."""
    present = log_p > -torch.inf
    safe_log_p = torch.where(present, log_p, 0.0)
    return torch.where(present, safe_log_p.exp() * (safe_log_p - log_q), 0.0)


def forward_kl_rows(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor) -> torch.Tensor:
    """`KL(teacher || student) = sum_c p_t (log p_t - log p_s)` per row (mode-covering; Hinton et al.'s term)."""
    return _xlogy_log(teacher_log_probs, student_log_probs).sum(-1)


def reverse_kl_rows(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor) -> torch.Tensor:
    """`KL(student || teacher) = sum_c p_s (log p_s - log p_t)` per row (mode-seeking). Infinite when the teacher
    gives 0 to a category the student does not: refused for label-only answers by [`hf_kd.losses.partial`]."""
    return _xlogy_log(student_log_probs, teacher_log_probs).sum(-1)


def generalized_jsd_rows(
    student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, beta: float = 0.5
) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence (Agarwal et al., 2024, eq. 1), in TRL's current convention:

        M = (1 - beta) * p_student + beta * p_teacher
        JSD_beta = beta * KL(p_teacher || M) + (1 - beta) * KL(p_student || M)

    with `beta = 0` special-cased to the forward `KL(teacher || student)` and `beta = 1` to the reverse
    `KL(student || teacher)` (the mixture's limits would give 0 there). No `T**2` factor, as in TRL.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta!r}.")
    if beta == 0.0:
        return forward_kl_rows(student_log_probs, teacher_log_probs)
    if beta == 1.0:
        return reverse_kl_rows(student_log_probs, teacher_log_probs)
    beta_t = torch.tensor(beta, dtype=student_log_probs.dtype, device=student_log_probs.device)
    mixture_log_probs = torch.logsumexp(
        torch.stack([student_log_probs + torch.log1p(-beta_t), teacher_log_probs + torch.log(beta_t)]), dim=0
    )
    kl_teacher = _xlogy_log(teacher_log_probs, mixture_log_probs).sum(-1)
    kl_student = _xlogy_log(student_log_probs, mixture_log_probs).sum(-1)
    return beta_t * kl_teacher + (1 - beta_t) * kl_student


def divergence_rows(
    divergence: str, student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, beta: float = 0.5
) -> torch.Tensor:
    """The per-row divergence named by `divergence`: `"kl"` (forward), `"reverse_kl"` or `"jsd"` (with `beta`)."""
    if divergence == "kl":
        return forward_kl_rows(student_log_probs, teacher_log_probs)
    if divergence == "reverse_kl":
        return reverse_kl_rows(student_log_probs, teacher_log_probs)
    if divergence == "jsd":
        return generalized_jsd_rows(student_log_probs, teacher_log_probs, beta)
    raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}.")
