"""Connectors: the trainable modules that bring a student's feature to its teacher's shape (FitNets' regressor, the
overhaul's conv + BatchNorm), chosen by the loss's connector rule (`hf_kd.features.table`). They are trained with the
student and never saved with it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .table import feature_loss

FEATURE_CONNECTORS = ("auto", "linear", "conv", "identity")


def _connectorless(student_shape: tuple, teacher_shape: tuple, loss: str, kind: str) -> nn.Module:
    """The identity, for a loss that compares features without a connector, once its shape rule holds."""
    s, t, rule = student_shape, teacher_shape, feature_loss(loss).connector
    both = f"student feature {s} and teacher feature {t} (per example)"
    if kind not in ("auto", "identity"):
        raise ValueError(f"feature_connector={kind!r}: feature_loss={loss!r} compares features without one.")
    if rule == "same_spatial" and (len(s) < 2 or s[1:] != t[1:] or len(s) != len(t)):
        raise ValueError(f"feature_loss={loss!r} needs feature maps of equal spatial size, got {both}.")
    if rule == "same_shape" and s != t:
        raise ValueError(f"feature_loss={loss!r} needs maps of the same shape, got {both}.")
    return nn.Identity()


def make_connector(student_shape: tuple, teacher_shape: tuple, loss: str, kind: str = "auto") -> nn.Module:
    """The module that brings a student feature (per-example shape `student_shape`) to its teacher's
    (`teacher_shape`) for `loss`: `nn.Identity` when the shapes match (and for the losses that need none), a
    `Linear` over the last dimension of vectors `(D,)` and token states `(L, D)`, a bias-free 1x1 `Conv2d` for maps
    `(C, H, W)`; a `"shape+bn"` rule adds a BatchNorm (Heo et al.: conv + BN, Linear + BN1d for vectors).
    Raises a `ValueError` with both shapes when the connector cannot match them."""
    s, t = tuple(student_shape), tuple(teacher_shape)
    spec = feature_loss(loss)
    if not spec.needs_connector:
        return _connectorless(s, t, loss, kind)
    with_bn = spec.connector == "shape+bn"
    both = f"student feature {s} and teacher feature {t} (per example)"
    if kind == "identity" or (kind == "auto" and s == t and not with_bn):
        if s != t:
            raise ValueError(f"feature_connector='identity' needs features of the same shape, got {both}.")
        return nn.Identity()
    if len(s) != len(t) or len(s) not in (1, 2, 3):
        raise ValueError(f"No connector maps the {both}: they must be both vectors, token states or maps.")
    if len(s) == 3:
        if kind == "linear" or s[1:] != t[1:]:
            raise ValueError(f"A 1x1-conv connector needs maps of equal spatial size, got {both}.")
        conv = nn.Conv2d(s[0], t[0], kernel_size=1, bias=not with_bn)
        return nn.Sequential(conv, nn.BatchNorm2d(t[0])) if with_bn else conv
    if kind == "conv" or s[:-1] != t[:-1]:
        raise ValueError(f"A linear connector maps the last dimension only (vectors, token states), got {both}.")
    if with_bn:
        if len(s) != 1:
            raise ValueError(f"feature_loss={loss!r} needs (C,) vectors or (C, H, W) maps, got {both}.")
        return nn.Sequential(nn.Linear(s[0], t[0], bias=False), nn.BatchNorm1d(t[0]))
    return nn.Linear(s[-1], t[-1])


def compatible_for(loss: str, kind: str):
    """`(student_shape, teacher_shape) -> bool`: whether [`make_connector`] can pair them for `loss`."""

    def compatible(student_shape, teacher_shape) -> bool:
        try:
            make_connector(student_shape, teacher_shape, loss, kind)
        except ValueError:
            return False
        return True

    return compatible


class FeatureConnectors(nn.Module):
    """The connectors of a run's pairs (one per pair, `nn.Identity` where none is needed) and the overhaul margins
    (buffers `margin_<i>`). Its forward maps the student's features of every pair at once, so that a
    `DistributedDataParallel` wrapper sees every parameter used in one call and averages their gradients."""

    def __init__(self, connectors: Sequence[nn.Module], margins: Sequence[torch.Tensor | None] = ()):
        super().__init__()
        self.connectors = nn.ModuleList(connectors)
        for index, margin in enumerate(margins):
            if margin is not None:
                self.register_buffer(f"margin_{index}", margin)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [connector(feature) for connector, feature in zip(self.connectors, features)]

    def margin(self, index: int) -> torch.Tensor | None:
        return getattr(self, f"margin_{index}", None)

    def has_parameters(self) -> bool:
        return any(parameter.requires_grad for parameter in self.parameters())
