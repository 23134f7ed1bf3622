"""Losses against a black-box teacher's answers: what an API returns instead of logits.

An answer per example is one of:

- full probabilities `p` over the C classes;
- the top k classes with their probabilities (`indices`, `probs`, k <= C);
- a label only (the teacher's argmax).

Each becomes a pair of distributions over one support, the student's and the teacher's, compared by a divergence of
[`hf_kd.losses.divergence`] (forward KL by default, as in Hinton et al.; `"reverse_kl"`; or TRL's generalized JSD):

- probabilities: the C classes;
- a label: the C classes with the teacher's one-hot, so the forward KL is the cross-entropy on its argmax (soft CE
  with a one-hot target);
- top-k, `"tail"` (the default): k + 1 categories, the k classes and a tail bucket, holding `1 - sum(top-k)` for the
  teacher and `1 - sum_i p_s(i)` over the same k classes for the student (TRL `ServerDistillationTrainer` with
  `loss_add_tail`, DistillKit `symmetric_uniform`). A true KL between two distributions: it keeps what the answer
  says about the rest of the classes ("92% on these three, 8% elsewhere"), never exceeds the full KL (grouping
  categories cannot increase a KL), and equals it when k = C. With k = 1 it is still informative, where a
  renormalised top-1 is always 0;
- top-k, `"renormalized"`: the teacher's k probabilities renormalised to 1 and the student's softmax over the same k
  classes (DistillKit `missing_probability_handling="zero"`, Axolotl). It ignores how much mass lies outside the k
  classes, so the student is not pushed to move mass into them; it equals the full KL when k = C.

No temperature: an API answers probabilities at its own temperature. Softening them needs logits, which a top-k
answer does not give for the classes outside it (the tail's softened mass is unknown), and which a label does not
give at all. The distributions are compared as answered (T = 1).

Every function averages over the rows selected by `mask` (every row when `None`) and takes logits `(N, C)`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from .divergence import DIVERGENCES, divergence_rows

TOP_K_LOSSES = ("tail", "renormalized")
# The keys of a `teacher_answers` mapping (hf_kd.batch maps its columns to these).
ANSWER_KINDS = ("probs", "top_k_indices", "top_k_probs", "labels")


def _log(probs: torch.Tensor) -> torch.Tensor:
    """log p in float32, `-inf` where p == 0 (a category the teacher rules out)."""
    return probs.float().log()


def _tail_log_probs(log_probs_on_k: torch.Tensor) -> torch.Tensor:
    """`(M, k)` log-probabilities -> `(M, k + 1)` with the tail bucket `log(1 - sum exp(.))` appended. The sum is
    clamped just below 1 (as TRL does) so that a top-k holding all the mass gives a finite, tiny tail."""
    log_sum = torch.logsumexp(log_probs_on_k, dim=-1, keepdim=True).clamp(max=-1e-7)
    return torch.cat([log_probs_on_k, torch.log(-torch.expm1(log_sum))], dim=-1)


def answer_log_probs(
    student_logits: torch.Tensor, answers: Mapping[str, torch.Tensor], top_k_loss: str = "tail"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's and the teacher's log-probabilities on the support the answer defines (see the module).

    Args:
        student_logits (`torch.Tensor` of shape `(N, C)`).
        answers (`Mapping[str, torch.Tensor]`): exactly one kind of answer: `"probs"` `(N, C)`; `"top_k_indices"`
            `(N, k)` long with `"top_k_probs"` `(N, k)`; or `"labels"` `(N,)` long.
        top_k_loss (`str`): `"tail"` or `"renormalized"`, for a top-k answer.
    """
    if student_logits.dim() != 2:
        raise ValueError(f"teacher answers are per example: student logits must be (N, C), got {tuple(student_logits.shape)}.")  # fmt: skip
    student_log_probs = F.log_softmax(student_logits.float(), dim=-1)
    if "probs" in answers:
        probs = answers["probs"]
        if probs.shape != student_logits.shape:
            raise ValueError(f"teacher probs have shape {tuple(probs.shape)}, the student's logits {tuple(student_logits.shape)}.")  # fmt: skip
        return student_log_probs, _log(probs)
    if "labels" in answers:
        labels = answers["labels"].long().reshape(-1, 1)
        one_hot_log = torch.full_like(student_log_probs, -torch.inf).scatter(1, labels, 0.0)
        return student_log_probs, one_hot_log
    if "top_k_indices" not in answers or "top_k_probs" not in answers:
        raise ValueError(f"teacher answers must hold 'probs', 'labels' or 'top_k_indices' + 'top_k_probs'; got {sorted(answers)}.")  # fmt: skip
    indices, probs = answers["top_k_indices"].long(), answers["top_k_probs"].float()
    if top_k_loss == "tail":
        return _tail_log_probs(student_log_probs.gather(1, indices)), _tail_log_probs(_log(probs))
    if top_k_loss == "renormalized":
        student_on_k = F.log_softmax(student_logits.float().gather(1, indices), dim=-1)
        return student_on_k, _log(probs / probs.sum(-1, keepdim=True))
    raise ValueError(f"top_k_loss must be one of {TOP_K_LOSSES}, got {top_k_loss!r}.")


def answer_loss(
    student_logits: torch.Tensor,
    answers: Mapping[str, torch.Tensor],
    divergence: str = "kl",
    beta: float = 0.5,
    top_k_loss: str = "tail",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The divergence named by `divergence` (see [`hf_kd.losses.divergence`]) between the teacher's answer and the
    student, on the answer's support, averaged over the rows where `mask` is True (0 when there is none)."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"loss_type must be one of {DIVERGENCES} with teacher answers, got {divergence!r}.")
    if "labels" in answers and (divergence == "reverse_kl" or (divergence == "jsd" and beta == 1.0)):
        raise ValueError(
            f"loss_type={divergence!r} (beta={beta}) is infinite against label-only answers (the teacher gives every "
            "other class probability 0): use 'kl' (cross-entropy on the teacher's label) or 'jsd' with beta < 1."
        )
    student_log_probs, teacher_log_probs = answer_log_probs(student_logits, answers, top_k_loss)
    per_row = divergence_rows(divergence, student_log_probs, teacher_log_probs.detach(), beta)
    if mask is None:
        return per_row.mean()
    mask = mask.reshape(-1)
    return torch.where(mask, per_row, 0.0).sum() / mask.sum().clamp(min=1)


def label_loss(student_logits: torch.Tensor, teacher_labels: torch.Tensor, mask=None) -> torch.Tensor:
    """Labels only: cross-entropy on the teacher's argmax (the forward KL against its one-hot)."""
    return answer_loss(student_logits, {"labels": teacher_labels}, mask=mask)


def top_k_tail_loss(student_logits, top_k_indices, top_k_probs, divergence: str = "kl", beta=0.5, mask=None):
    """Top-k with a tail bucket: the divergence over the k classes and the rest (k + 1 categories)."""
    answers = {"top_k_indices": top_k_indices, "top_k_probs": top_k_probs}
    return answer_loss(student_logits, answers, divergence, beta, "tail", mask)


def top_k_renormalized_loss(student_logits, top_k_indices, top_k_probs, divergence: str = "kl", beta=0.5, mask=None):
    """Top-k renormalised: the divergence between both distributions restricted to the k classes, each summing to 1."""
    answers = {"top_k_indices": top_k_indices, "top_k_probs": top_k_probs}
    return answer_loss(student_logits, answers, divergence, beta, "renormalized", mask)


def probs_loss(student_logits, teacher_probs, divergence: str = "kl", beta=0.5, mask=None):
    """Full probabilities: the divergence over the C classes, at the teacher's own temperature."""
    return answer_loss(student_logits, {"probs": teacher_probs}, divergence, beta, mask=mask)
