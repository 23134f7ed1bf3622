"""An ensemble of frozen teachers that behaves as one teacher.

[`TeacherEnsemble`] runs every teacher on its inputs and returns one `logits` tensor, *pseudo-logits* whose softmax at
the run's temperature is the combined soft target, so that every loss of [`hf_kd.losses.logit`] applies unchanged, live or
precomputed (`add_teacher_logits` fingerprints the ensemble like any teacher: every teacher's weights, and through the
ensemble's config the method, the weights and `T`). Three ways to combine teachers `k = 1..K` with logits `z_k`:

- `mean_probs` (default): the weighted mixture `sum_k w_k softmax(z_k / T)`, exactly, as the pseudo-logits
  `T * logsumexp_k(log w_k + log_softmax(z_k / T))` ([`mixture_logits`]). For the forward KL, `KL(mixture || q)` has
  the gradient in `q` of `sum_k w_k KL(p_k || q)`: distilling the mixture is distilling each teacher with weight `w_k`.
- `mean_logits`: `sum_k w_k z_k` ([`weighted_mean_logits`]), TextBrewer's `MultiTeacherDistiller`.
- `confidence`: the mixture with per-example weights from each teacher's cross-entropy on the true label `y`,
  `w_k(x) = (1 - softmax_k(CE(z_k, y))) / (K - 1)` ([`confidence_weights`]), the weights of CA-MKD (Zhang, Chen & Wang,
  "Confidence-Aware Multi-Teacher Knowledge Distillation", ICASSP 2022): the teacher that is surer of the right class
  weighs more. It needs the labels, so the ensemble cannot run without them (e.g. to precompute logits).

Teachers may differ in architecture; each reads its own inputs when the batch has them (`teacher_<k>_<name>`, see
[`hf_kd.batch`]), otherwise the inputs shared by the ensemble.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig
from transformers.utils import ModelOutput

from .. import batch as batch_convention
from ..losses.logit import IGNORE_INDEX
from ..utils import atomic_write
from .loading import check_compatible, load_teacher, logits_of

ENSEMBLE_METHODS = ("mean_probs", "mean_logits", "confidence")
ENSEMBLE_CONFIG_NAME = "ensemble_config.json"
_NEEDS_LABELS = (
    "ensemble_method='confidence' weighs each teacher by its confidence on the true label, so the ensemble needs the "
    "batch's `labels`, and these inputs have none (precompute_teacher_logits cannot pass them): keep the teachers "
    "live (precompute_teacher_logits=False), or use ensemble_method='mean_probs'."
)


# ---------------------------------------------------------------------------------------------------------------------
# Combinations: pure functions of the stacked teachers' logits `(K, ..., C)`
# ---------------------------------------------------------------------------------------------------------------------


def _weights_like(weights: torch.Tensor | Sequence[float], logits: torch.Tensor) -> torch.Tensor:
    """`(K,)` static weights or `(K, ...)` per-example ones, as float32 broadcastable to `(K, ..., 1)`."""
    weights = torch.as_tensor(weights, dtype=torch.float32, device=logits.device)
    return weights.reshape(*weights.shape, *([1] * (logits.dim() - weights.dim())))


def mixture_logits(logits: torch.Tensor, weights: torch.Tensor | Sequence[float], temperature: float) -> torch.Tensor:
    """Pseudo-logits of the mixture `sum_k w_k softmax(z_k / T)`: `T * logsumexp_k(log w_k + log_softmax(z_k / T))`,
    so that `softmax(result / T)` is the mixture exactly (weights summing to 1).

    Args:
        logits (`torch.Tensor` of shape `(K, ..., C)`): the teachers' logits, stacked.
        weights: `(K,)` weights, or `(K, ...)` per-example weights, each summing to 1 over `K`.
        temperature (`float`): the softening temperature `T` of the run's loss.
    """
    log_p = F.log_softmax(logits.float() / temperature, dim=-1)
    return temperature * torch.logsumexp(_weights_like(weights, logits).log() + log_p, dim=0)


def weighted_mean_logits(logits: torch.Tensor, weights: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """`sum_k w_k z_k` over the stacked `(K, ..., C)` logits (TextBrewer's logit average)."""
    return (_weights_like(weights, logits) * logits.float()).sum(0)


def confidence_weights(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """CA-MKD's per-example teacher weights `(K, ...)`: `w_k = (1 - softmax_k(CE(z_k, y))) / (K - 1)`, summing to 1
    over `K`. Positions whose label is `ignore_index` get equal weights `1 / K`; a single teacher gets weight 1."""
    num_teachers = logits.shape[0]
    if num_teachers == 1:
        return torch.ones(logits.shape[:-1], device=logits.device)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, 0).long()
    ce = torch.stack([F.cross_entropy(z.float().movedim(-1, 1), safe, reduction="none") for z in logits])
    weights = (1.0 - ce.softmax(dim=0)) / (num_teachers - 1)
    return torch.where(valid, weights, 1.0 / num_teachers)


def combine_logits(
    method: str, logits: torch.Tensor, weights: Sequence[float], temperature: float, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """The ensemble's pseudo-logits by `method` (one of [`ENSEMBLE_METHODS`]) from the stacked `(K, ..., C)` logits."""
    if method == "mean_probs":
        return mixture_logits(logits, weights, temperature)
    if method == "mean_logits":
        return weighted_mean_logits(logits, weights)
    if method == "confidence":
        if labels is None:
            raise ValueError(_NEEDS_LABELS)
        return mixture_logits(logits, confidence_weights(logits, labels), temperature)
    raise ValueError(f"ensemble_method must be one of {list(ENSEMBLE_METHODS)}, got {method!r}.")


def normalized_weights(weights: Sequence[float] | None, num_teachers: int) -> list[float]:
    """Static teacher weights summing to 1 (equal by default); refuses a wrong count or a weight that is not > 0."""
    if weights is None:
        return [1.0 / num_teachers] * num_teachers
    weights = [float(w) for w in weights]
    if len(weights) != num_teachers:
        raise ValueError(
            f"teacher_weights has {len(weights)} values for {num_teachers} teachers: give one per teacher."
        )
    if not all(math.isfinite(w) and w > 0 for w in weights):
        raise ValueError(f"teacher_weights must all be finite numbers > 0, got {weights}.")
    return [w / sum(weights) for w in weights]


# ---------------------------------------------------------------------------------------------------------------------
# The ensemble as one teacher
# ---------------------------------------------------------------------------------------------------------------------


class TeacherEnsembleConfig(PretrainedConfig):
    """What decides the ensemble's outputs besides its teachers' weights: the method, the weights, `T`, and each
    teacher's class, config and name (hashed by `teacher_fingerprint`). `num_labels` / `id2label` are the teachers'."""

    model_type = "hf_kd_teacher_ensemble"

    def __init__(self, ensemble_method="mean_probs", teacher_weights=None, temperature=1.0, teacher_names=None,
                 teacher_classes=None, teacher_configs=None, **kwargs):  # fmt: skip
        self.ensemble_method = ensemble_method
        self.teacher_weights = teacher_weights
        self.temperature = temperature
        self.teacher_names = teacher_names or []
        self.teacher_classes = teacher_classes or []
        self.teacher_configs = teacher_configs or []
        super().__init__(**kwargs)


@dataclass
class EnsembleOutput(ModelOutput):
    """`logits`: the ensemble's pseudo-logits; `teacher_logits`: each teacher's, stacked `(K, ..., C)`."""

    logits: torch.Tensor | None = None
    teacher_logits: torch.Tensor | None = None


def _name_of(teacher: nn.Module, given: str | None) -> str:
    return given or getattr(getattr(teacher, "config", None), "_name_or_path", "") or type(teacher).__name__


class TeacherEnsemble(nn.Module):
    """
    Several frozen teachers as one: `forward` returns an [`EnsembleOutput`] whose `logits` are the combined
    pseudo-logits (see the module docstring for the methods and their formulas).

    Args:
        teachers (`Sequence[nn.Module]`): the teachers (any architectures with the same classes).
        names (`Sequence[str]`, *optional*): how errors and the report name them (default: their `_name_or_path`).
        weights (`Sequence[float]`, *optional*): static weights (normalised to sum to 1; default equal). Not with
            `method="confidence"`, whose weights are per example.
        method (`str`): one of [`ENSEMBLE_METHODS`].
        temperature (`float`): the run's `T`: `mean_probs` and `confidence` mix the teachers' distributions at `T`.
    """

    def __init__(self, teachers: Sequence[nn.Module], names: Sequence[str] | None = None,
                 weights: Sequence[float] | None = None, method: str = "mean_probs", temperature: float = 1.0):  # fmt: skip
        super().__init__()
        if len(teachers) == 0:
            raise ValueError("A TeacherEnsemble needs at least one teacher.")
        if method not in ENSEMBLE_METHODS:
            raise ValueError(f"ensemble_method must be one of {list(ENSEMBLE_METHODS)}, got {method!r}.")
        if method == "confidence" and weights is not None:
            raise ValueError(
                "teacher_weights cannot be combined with ensemble_method='confidence' (per-example weights)."
            )
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}.")
        names = list(names) if names is not None else [None] * len(teachers)
        self.teachers = nn.ModuleList(teachers)
        self.names = [_name_of(t, n) for t, n in zip(teachers, names)]
        self.weights = normalized_weights(weights, len(teachers))
        self.method, self.temperature = method, float(temperature)
        labelled = next((t.config for t in teachers if getattr(t, "config", None) is not None), None)
        self.config = TeacherEnsembleConfig(
            ensemble_method=method, teacher_weights=self.weights, temperature=self.temperature,
            teacher_names=self.names, teacher_classes=[type(t).__qualname__ for t in teachers],
            teacher_configs=[json.loads(t.config.to_json_string(use_diff=False)) if hasattr(t, "config") else None
                             for t in teachers],
            num_labels=getattr(labelled, "num_labels", 2), id2label=getattr(labelled, "id2label", None),
        )  # fmt: skip
        for teacher in self.teachers:  # frozen: no gradients, no dropout
            teacher.requires_grad_(False).eval()

    @property
    def needs_labels(self) -> bool:
        """True when the combination reads the true labels (`confidence`): the trainer then passes them."""
        return self.method == "confidence"

    @property
    def input_names(self) -> set[str]:
        """The inputs the teachers' `forward`s take (what `teacher_input_columns` reads off a dataset)."""
        import inspect

        return {name for t in self.teachers for name in inspect.signature(t.forward).parameters} - {"kwargs"}

    def train(self, mode: bool = True):
        return super().train(False)  # the teachers stay in eval mode whatever the caller asks

    def forward(self, labels: torch.Tensor | None = None, **inputs) -> EnsembleOutput:
        if self.needs_labels and labels is None:
            raise ValueError(_NEEDS_LABELS)  # before running K teachers for nothing
        stacked = torch.stack([
            logits_of(teacher(**batch_convention.member_inputs(inputs, index))).float()
            for index, teacher in enumerate(self.teachers)
        ])  # fmt: skip
        return EnsembleOutput(
            logits=combine_logits(self.method, stacked, self.weights, self.temperature, labels), teacher_logits=stacked
        )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """Each teacher in `save_directory/teacher_<k>` (`save_pretrained`), the ensemble's config beside them."""
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        for index, teacher in enumerate(self.teachers):
            teacher.save_pretrained(path / f"teacher_{index}", **kwargs)
        atomic_write(path / ENSEMBLE_CONFIG_NAME, self.config.to_json_string(use_diff=False))


def check_teachers(student: nn.Module, teachers: Sequence[nn.Module], names: Sequence[str]) -> None:
    """[`check_compatible`] for each teacher, with the error naming which one (index and name)."""
    for index, (teacher, name) in enumerate(zip(teachers, names)):
        try:
            check_compatible(student, teacher)
        except ValueError as err:
            raise ValueError(
                f"Teacher {index} ({name}) of the ensemble is incompatible with the student: {err}"
            ) from err


def ensemble_for(teachers: Sequence[nn.Module | str] | TeacherEnsemble, student: nn.Module, args) -> TeacherEnsemble:
    """The ensemble a [`DistillationTrainer`] distils: built from `teachers` (models, or names / paths loaded with the
    Auto class of the student's task and `args.teacher_model_init_kwargs`) with `args.ensemble_method`,
    `args.teacher_weights` and `args.temperature`, or a given [`TeacherEnsemble`] checked against `args`. Every
    teacher is checked against the student; errors name the teacher."""
    if isinstance(teachers, TeacherEnsemble):
        ensemble = teachers
        if ensemble.method != "mean_logits" and ensemble.temperature != args.temperature:
            raise ValueError(
                f"The TeacherEnsemble mixes its teachers at T={ensemble.temperature} but the run's temperature is "
                f"{args.temperature}: its pseudo-logits are the mixture at its own T only. Build it with "
                "temperature=args.temperature."
            )
    else:
        loaded = [
            load_teacher(t, student, args.teacher_model_init_kwargs) if isinstance(t, str) else t for t in teachers
        ]
        if args.teacher_model_init_kwargs and not any(isinstance(t, str) for t in teachers):
            raise ValueError("teacher_model_init_kwargs only applies to teachers loaded from a name or path.")
        names = [t if isinstance(t, str) else None for t in teachers]
        ensemble = TeacherEnsemble(
            loaded, names, args.teacher_weights, method=args.ensemble_method, temperature=args.temperature
        )
    check_teachers(student, list(ensemble.teachers), ensemble.names)
    if args.loss_type == "mse" and ensemble.method != "mean_logits":
        raise ValueError(
            f"loss_type='mse' compares logits, but ensemble_method={ensemble.method!r} yields a mixture of "
            "probabilities, whose logits are only defined up to a constant per example: use "
            "ensemble_method='mean_logits' with the mse loss."
        )
    return ensemble


def resolve_teacher(teacher, student: nn.Module, args) -> nn.Module | None:
    """The teacher a [`DistillationTrainer`] distils: `teacher` as given (default: `args.teacher_model_name_or_path`),
    a name or path loaded with the Auto class of the student's task, or several teachers combined into one
    [`hf_kd.ensemble.TeacherEnsemble`]."""
    teacher = args.teacher_model_name_or_path if teacher is None else teacher
    if isinstance(teacher, (list, tuple, TeacherEnsemble)):  # several teachers behave as one
        return ensemble_for(teacher, student, args)
    if isinstance(teacher, str):
        whole = getattr(args, "teacher_sharding", "auto") == "whole"
        return load_teacher(teacher, student, args.teacher_model_init_kwargs, whole=whole)
    if teacher is not None and args.teacher_model_init_kwargs:
        raise ValueError(
            "teacher_model_init_kwargs only applies when the teacher is loaded from a name or path, but "
            "teacher_model is already a model instance."
        )
    return teacher
