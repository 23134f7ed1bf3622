"""The feature losses of white-box distillation, each declared once with its facts.

Adding a loss is one entry here (plus its formula, a pure function in `hf_kd.losses.feature` or
`hf_kd.losses.relation`, tested against the formula written out): `DistillationConfig.feature_loss` accepts it,
`auto` pairs, connectors, margins and depth weights follow from the entry, and the trainer logs it as
`loss_feature`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..losses.feature import (
    attention_mse_loss,
    attention_transfer_loss,
    cosine_loss,
    hidden_state_mse_loss,
    hint_loss,
    overhaul_loss,
    pkd_loss,
)
from ..losses.relation import rkd_loss, teacher_anchored_triplet_loss

# The connector rules: "shape" maps the student's shape to the teacher's when they differ (a Linear for vectors and
# token states, a 1x1 conv for maps); "shape+bn" always maps, through conv/linear + BatchNorm (Heo et al.'s overhaul
# connector); the "none" rules compare without one: "any" (scale-invariant relations), "same_spatial" (attention
# transfer normalises over channels), "same_shape" (attention maps).
CONNECTOR_RULES = ("shape", "shape+bn", "any", "same_spatial", "same_shape")


@dataclass(frozen=True)
class FeatureLoss:
    """One feature loss and the facts the run needs about it.

    Attributes:
        compare: `(student, teacher, *, margin, labels, attention_mask) -> scalar`, one pair's loss on the
            connected student feature and the teacher's.
        default_weight: the feature term's weight when `feature_weight` is not given: the reference implementations'
            factor for the normalisation of `compare`.
        connector: one of `CONNECTOR_RULES`.
        field: the model output `auto` pairs read (`"hidden_states"` or `"attentions"`).
        penultimate: `auto` pairs the last hidden states only (relations are computed on the classifier's input).
        margins: the teacher features get the overhaul's margins (from their BatchNorm, or measured).
        depth_weighted: pair `i` of `n` weighs `1 / 2**(n - i - 1)` (the overhaul's deeper-is-heavier sum).
    """

    compare: Callable[..., torch.Tensor]
    default_weight: float
    connector: str = "shape"
    field: str = "hidden_states"
    penultimate: bool = False
    margins: bool = False
    depth_weighted: bool = False

    @property
    def needs_connector(self) -> bool:
        return self.connector in ("shape", "shape+bn")


def _mask_for(feature: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The attention mask applies to token states `(N, L, D)` whose length matches it; other features have none."""
    if attention_mask is None or feature.dim() != 3 or attention_mask.shape != feature.shape[:2]:
        return None
    return attention_mask


def _cosine(student, teacher, *, attention_mask=None, **_):
    if student.dim() > 3:  # maps are compared flattened (PyTorch's KD tutorial), token states position by position
        student, teacher = student.flatten(1), teacher.flatten(1)
    return cosine_loss(student, teacher, _mask_for(student, attention_mask))


def _attention_mse(student, teacher, *, attention_mask=None, **_):
    mask = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
    return attention_mse_loss(student, teacher, mask)


def _first_position(feature: torch.Tensor) -> torch.Tensor:
    return feature[:, 0] if feature.dim() == 3 else feature  # [CLS] of token states; vectors as they are


FEATURE_LOSS_TABLE: dict[str, FeatureLoss] = {
    # FitNets (Romero et al., 2015).
    "hint": FeatureLoss(lambda s, t, **_: hint_loss(s, t), default_weight=1.0),
    "cosine": FeatureLoss(_cosine, default_weight=1.0),
    # Heo et al., 2019: /1000 in clovaai's CIFAR script.
    "overhaul": FeatureLoss(
        lambda s, t, *, margin=None, **_: overhaul_loss(s, t, margin),
        default_weight=1e-3,
        connector="shape+bn",
        margins=True,
        depth_weighted=True,
    ),  # fmt: skip
    # Zagoruyko & Komodakis, 2017: beta 1e3 in szagoruyko's cifar.py.
    "attention": FeatureLoss(
        lambda s, t, **_: attention_transfer_loss(s, t), default_weight=1e3, connector="same_spatial"
    ),
    # TinyBERT (Jiao et al., 2020).
    "hidden_mse": FeatureLoss(
        lambda s, t, *, attention_mask=None, **_: hidden_state_mse_loss(s, t, _mask_for(s, attention_mask)),
        default_weight=1.0,
    ),
    "attention_mse": FeatureLoss(_attention_mse, default_weight=1.0, connector="same_shape", field="attentions"),
    # Patient KD (Sun et al., 2019): beta 100.
    "pkd": FeatureLoss(lambda s, t, **_: pkd_loss(_first_position(s), _first_position(t)), default_weight=100.0),
    # Park et al., 2019: its own weights 1 and 2 inside rkd_loss.
    "rkd": FeatureLoss(lambda s, t, **_: rkd_loss(s, t), default_weight=1.0, connector="any", penultimate=True),
    "triplet": FeatureLoss(
        lambda s, t, *, labels=None, **_: teacher_anchored_triplet_loss(s, t, labels),
        default_weight=1.0,
        penultimate=True,
    ),  # fmt: skip
}

FEATURE_LOSSES = tuple(FEATURE_LOSS_TABLE)


def feature_loss(name: str) -> FeatureLoss:
    """The table's entry for `name`, or a `ValueError` listing the names."""
    if name not in FEATURE_LOSS_TABLE:
        raise ValueError(f"feature_loss must be one of {list(FEATURE_LOSSES)}, got {name!r}.")
    return FEATURE_LOSS_TABLE[name]
