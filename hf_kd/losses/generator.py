"""Losses of data-free distillation: what a generator of synthetic inputs minimises, and how diverse its batches are.

Each is a small pure function of tensors, as the reference code computes it:

- DAFL (Chen et al., ICCV 2019; `DAFL-train.py`): [`one_hot_loss`] `CE(t, argmax t)`, [`information_entropy_loss`]
  `sum(p_mean * log10 p_mean)` and [`activation_loss`] `-mean|f_T|`, weighted `oh`, `ie`, `a`;
- DFAD (Fang et al., 2019; `DFAD_mnist.py`): [`logit_l1_distance`], maximised by the generator, minimised by the student;
- Lopes et al. (2017): [`activation_statistics_loss`], the batch's per-class activation moments against recorded ones;
- DeepInversion-style BatchNorm matching: [`batchnorm_statistics_loss`] (teachers with BatchNorm only);
- diversity of a synthetic batch: [`class_histogram_entropy`], [`mean_pairwise_distance`] (the collapse guard's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def one_hot_loss(teacher_logits: torch.Tensor) -> torch.Tensor:
    """DAFL's one-hot term: cross-entropy of the teacher's logits against its own argmax (confident answers)."""
    return F.cross_entropy(teacher_logits, teacher_logits.detach().argmax(dim=-1))


def information_entropy_loss(teacher_logits: torch.Tensor) -> torch.Tensor:
    """DAFL's information-entropy term `sum_c p_c log10 p_c`, `p` the batch mean of the teacher's softmax: the
    negative entropy (base 10) of the class histogram, minimal (`-log10 C`) when the classes are balanced."""
    p_mean = teacher_logits.float().softmax(dim=-1).mean(dim=0)
    return (p_mean * torch.log10(p_mean)).sum()


def activation_loss(teacher_features: torch.Tensor) -> torch.Tensor:
    """DAFL's activation term `-mean |f_T|`, `f_T` the teacher's penultimate features (strong responses)."""
    return -teacher_features.float().abs().mean()


def logit_l1_distance(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """DFAD's discrepancy: the mean absolute difference of the logits (`F.l1_loss`). The student minimises it; the
    generator maximises it (its loss is the negative)."""
    return F.l1_loss(student_logits.float(), teacher_logits.float())


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """`T**2 * KL(softmax(t / T) || softmax(s / T))`, averaged over the batch: DAFL's student loss (at `T = 1`)."""
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    p_teacher = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * temperature**2


def activation_statistics_loss(
    activations: torch.Tensor, labels: torch.Tensor, means: torch.Tensor, variances: torch.Tensor,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """How far a batch's per-class activation moments are from recorded ones (Lopes et al.'s metadata).

    `activations` `(B, D)` of one layer, `labels` `(B,)` the class each example was generated for; `means` and
    `variances` `(C, D)` recorded per class. For each class present in the batch: `(m_c - mu_c)^2 + (s_c - sigma_c)^2`
    per unit (`m`, `s` the batch's mean and standard deviation over that class's examples), divided by `scale` (default:
    the layer's mean recorded variance, so that layers of any magnitude weigh alike), then averaged over units and
    classes.
    """
    # One scale per layer, not per unit: a unit that real data never activates (variance ~0) would otherwise weigh
    # without bound, and the generator would chase it alone.
    scale = (variances.mean() if scale is None else scale).clamp_min(1e-6)
    # Per-class sums as one matmul (a Python loop over classes costs more than the teacher's forward).
    one_hot = torch.nn.functional.one_hot(labels, means.shape[0]).to(activations.dtype).float()  # (B, C)
    counts = one_hot.sum(dim=0)
    present = counts > 0
    values = activations.float()
    batch_means = (one_hot.T @ values)[present] / counts[present, None]
    batch_squares = (one_hot.T @ values**2)[present] / counts[present, None]
    batch_stds = (batch_squares - batch_means**2).clamp_min(1e-8).sqrt()
    recorded_stds = variances[present].clamp_min(0).sqrt()
    distances = (batch_means - means[present]) ** 2 + (batch_stds - recorded_stds) ** 2
    return (distances / scale).mean()


def batchnorm_statistics_loss(
    batch_means: Sequence[torch.Tensor], batch_variances: Sequence[torch.Tensor],
    running_means: Sequence[torch.Tensor], running_variances: Sequence[torch.Tensor],
) -> torch.Tensor:  # fmt: skip
    """DeepInversion's feature-distribution term: `sum_l ||mu_l(x) - running_mean_l||_2 + ||var_l(x) - running_var_l||_2`
    over the teacher's BatchNorm layers, the batch's per-channel moments of each layer's input against its running
    statistics."""
    return sum(
        torch.linalg.vector_norm(mean - running_mean) + torch.linalg.vector_norm(var - running_var)
        for mean, var, running_mean, running_var in zip(batch_means, batch_variances, running_means, running_variances)
    )


def class_histogram_entropy(predictions: torch.Tensor, num_classes: int) -> float:
    """The entropy of the histogram of `predictions` (class indices) divided by `log(num_classes)`: 1 when every
    class is equally frequent, 0 when one class takes the whole batch."""
    if num_classes < 2:
        return 0.0
    counts = torch.bincount(predictions.flatten(), minlength=num_classes).float()
    p = counts / counts.sum()
    p = p[p > 0]
    return float(-(p * p.log()).sum() / math.log(num_classes))


def mean_pairwise_distance(inputs: torch.Tensor) -> float:
    """The mean Euclidean distance between the distinct pairs of a batch (each example flattened), divided by
    `sqrt(dimension)`: a per-coordinate scale, 0 when every example is the same."""
    flat = inputs.detach().flatten(start_dim=1).float()
    n = flat.shape[0]
    if n < 2:
        return 0.0
    distances = torch.cdist(flat, flat)
    return float(distances.sum() / (n * (n - 1)) / math.sqrt(flat.shape[1]))
