"""The feature term of a white-box distillation run: the chosen pairs, their connectors (trained with the student,
never saved with it), the overhaul margins, and the loss of one batch. The trainer builds one [`FeatureTerm`] at
construction (a shape probe on a sample batch sizes the connectors) and adds its value in `compute_loss_terms`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from ..batch import teacher_feature_column
from ..features.connectors import FeatureConnectors, compatible_for, make_connector
from ..features.names import AUTO, FeatureCollector, auto_pairs, parse_feature_pairs
from ..features.table import feature_loss
from ..losses.feature import overhaul_margin_from_bn, overhaul_margin_from_stats, overhaul_negative_stats
from ..teacher.loading import run_teacher

logger = logging.get_logger(__name__)

CONNECTORS_NAME = "feature_connectors.safetensors"


def use_eager_attention(model: nn.Module, role: str) -> None:
    """Only the eager attention returns attention maps (SDPA and flash kernels never form them, and transformers then
    returns none): a model whose maps a feature pair reads is switched to it, the same weights, said in the log."""
    current = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if current in (None, "eager") or not hasattr(model, "set_attn_implementation"):
        return
    model.set_attn_implementation("eager")
    logger.warning(
        f"The {role} computed its attention with {current!r}, which returns no attention maps: switched to 'eager' "
        "for the attention pairs (slower, more memory)."
    )


@contextmanager
def _eval_mode(model: nn.Module):
    """The probe must not move a BatchNorm's running statistics or draw dropout masks of the real run."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _probe(collector: FeatureCollector, run: Callable[[], Any]) -> dict[str, torch.Tensor]:
    with _eval_mode(collector.model), collector.active(), torch.no_grad():
        run()
    repeated = [name for name, count in collector.calls.items() if count > 1]
    collector.calls.clear()
    if repeated:
        raise ValueError(
            f"The {collector.role}'s module feature(s) {repeated} run more than once per forward (a shared module), "
            "so which call to compare is ambiguous: name another module, or a hidden_states entry."
        )
    return collector.take()


def _per_example(tensors: Iterable[torch.Tensor]) -> list[tuple[int, ...]]:
    return [tuple(tensor.shape[1:]) for tensor in tensors]


class FeatureTerm:
    """The feature term: `sum_i w_i * loss(connector_i(student feature_i), teacher feature_i)` over the pairs, with
    `w_i = 1`, or `1 / 2**(n - i - 1)` for the overhaul (Heo et al.: deeper pairs count more). Build it with
    [`FeatureTerm.build`]; features are collected while [`collecting`](#FeatureTerm.collecting) is active."""

    def __init__(
        self, pairs, loss: str, connectors: FeatureConnectors, student: FeatureCollector, teacher: FeatureCollector
    ):
        self.pairs, self.loss, self.connectors = pairs, loss, connectors
        self.student, self.teacher = student, teacher
        # What the loss calls: the connectors, or their DistributedDataParallel wrapper (set by the trainer).
        self.connectors_forward: nn.Module = connectors
        self.teacher_shapes: dict[str, tuple[int, ...]] = {}
        # Teacher feature -> the batch column that carries it when it was cached with the logits (see `use_cached`).
        self.cached_columns: dict[str, str] = {}

    @classmethod
    def build(
        cls,
        student: nn.Module,
        teacher: nn.Module,
        *,
        feature_pairs: Sequence[str],
        loss: str,
        connector: str,
        student_inputs: dict[str, Any],
        teacher_inputs: dict[str, Any],
        margin_batches: Callable[[], Iterable[dict[str, Any]]],
    ) -> FeatureTerm:
        """Resolve the pairs (`auto`: by relative depth), probe both models once on a sample batch, size the
        connectors (on the student's device), and measure the overhaul margins over `margin_batches()` (the
        teacher's inputs of the training set) when a teacher feature has no BatchNorm to read them from."""
        pairs = parse_feature_pairs(feature_pairs)
        spec = feature_loss(loss)
        if (spec.field == "attentions" and pairs == AUTO) or (
            pairs != AUTO and any(name.field == "attentions" for pair in pairs for name in pair)
        ):
            use_eager_attention(student, "student"), use_eager_attention(teacher, "teacher")
        student_pass, teacher_pass = lambda: student(**student_inputs), lambda: run_teacher(teacher, teacher_inputs)
        if pairs == AUTO:
            field = (spec.field,)
            s_probe, t_probe = (
                FeatureCollector(student, [], "student", field),
                FeatureCollector(teacher, [], "teacher", field),
            )
            _probe(s_probe, student_pass), _probe(t_probe, teacher_pass)
            shapes = [{f: _per_example(c.field_values.get(f, ())) for f in field} for c in (s_probe, t_probe)]
            pairs = auto_pairs(student, teacher, *shapes, compatible_for(loss, connector), loss)
        s_collector = FeatureCollector(student, [s for s, _ in pairs], "student")
        t_collector = FeatureCollector(teacher, [t for _, t in pairs], "teacher")
        s_features, t_features = _probe(s_collector, student_pass), _probe(t_collector, teacher_pass)
        modules = []
        for s_name, t_name in pairs:
            s_shape, t_shape = tuple(s_features[s_name.text].shape[1:]), tuple(t_features[t_name.text].shape[1:])
            try:
                modules.append(make_connector(s_shape, t_shape, loss, connector))
            except ValueError as error:
                raise ValueError(f"feature pair {s_name.text}:{t_name.text}: {error}") from None
        device = next(student.parameters()).device
        margins = _overhaul_margins(t_collector, pairs, margin_batches) if spec.margins else ()
        term = cls(pairs, loss, FeatureConnectors(modules, margins).to(device), s_collector, t_collector)
        term.teacher_shapes = {t.text: tuple(t_features[t.text].shape[1:]) for _, t in pairs}
        return term

    def describe(self) -> list[str]:
        """The pairs as `"student_feature:teacher_feature"` strings."""
        return [f"{s.text}:{t.text}" for s, t in self.pairs]

    def teacher_features(self) -> list[str]:
        """The teacher features the pairs compare, each once, in pair order (the order they are cached in)."""
        return list(dict.fromkeys(t.text for _, t in self.pairs))

    def uncacheable_teacher_features(self) -> dict[str, tuple[int, ...]]:
        """The teacher features that are not one vector per example (maps, token states, attention maps), with
        their per-example shapes as probed: caching them would take `C*H*W` or `L*D` values per example."""
        return {name: shape for name, shape in self.teacher_shapes.items() if len(shape) != 1}

    def use_cached(self) -> list[str]:
        """Read the teacher's features from the batch columns `teacher_feature_<i>` (in `teacher_features()` order)
        from now on; returns the feature names to cache. Only features this term asked to cache are ever read."""
        names = self.teacher_features()
        self.cached_columns = {name: teacher_feature_column(index) for index, name in enumerate(names)}
        return names

    def cached_teacher_features(self, teacher_targets: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        """The batch's cached teacher features by name, or `None` when it does not carry them all (an evaluation
        batch, or a collator that dropped them): the live teacher's features are used then."""
        if not self.cached_columns or any(c not in teacher_targets for c in self.cached_columns.values()):
            return None
        return {name: teacher_targets[column] for name, column in self.cached_columns.items()}

    @contextmanager
    def collecting(self):
        """Hooks on both models for the duration (one training or evaluation step); removed on exit."""
        with ExitStack() as stack:
            stack.enter_context(self.student.active())
            stack.enter_context(self.teacher.active())
            yield self

    def has_teacher_features(self) -> bool:
        return all(t.text in self.teacher.features for _, t in self.pairs)

    def __call__(self, labels=None, attention_mask=None, teacher_features=None) -> torch.Tensor:
        """The term for the features the last forwards of both models produced (taken: the next step needs its own),
        or, when given, for `teacher_features` (cached with the logits) instead of the teacher's."""
        student, teacher = self.student.take(), self.teacher.take()
        teacher = teacher_features if teacher_features is not None else teacher
        missing = [s.text for s, _ in self.pairs if s.text not in student]
        missing += [t.text for _, t in self.pairs if t.text not in teacher]
        if missing:
            raise RuntimeError(
                f"The features {missing} were not collected: the models must run inside FeatureTerm.collecting()."
            )
        self.connectors.train(self.student.model.training)
        connected = self.connectors_forward([student[s.text] for s, _ in self.pairs])
        n, spec = len(self.pairs), feature_loss(self.loss)
        total = connected[0].new_zeros((), dtype=torch.float32)
        for index, ((_, t_name), feature) in enumerate(zip(self.pairs, connected)):
            weight = 1.0 / 2 ** (n - index - 1) if spec.depth_weighted else 1.0
            value = spec.compare(
                feature, teacher[t_name.text], margin=self.connectors.margin(index), labels=labels,
                attention_mask=attention_mask,
            )  # fmt: skip
            total = total + weight * value
        return total


def _overhaul_margins(collector: FeatureCollector, pairs, margin_batches) -> list[torch.Tensor]:
    """Per pair, the margin of the teacher feature: from the BatchNorm that produces it (Heo et al.'s Gaussian
    expectation), else the mean negative response per channel over one pass of the teacher on the training set."""
    margins: dict[str, torch.Tensor] = {}
    for _, t_name in pairs:
        module = collector.module(t_name) if t_name.path and not t_name.of_input else None
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            margins[t_name.text] = overhaul_margin_from_bn(module.weight, module.bias)
    measured = [t for _, t in pairs if t.text not in margins]
    if measured:
        stats: dict[str, tuple] = {}
        with _eval_mode(collector.model), collector.active(), torch.no_grad():
            for inputs in margin_batches():
                run_teacher(collector.model, inputs)
                features = collector.take()
                for name in measured:
                    stats[name.text] = overhaul_negative_stats(features[name.text], stats.get(name.text))
        collector.calls.clear()
        margins.update({name: overhaul_margin_from_stats(value) for name, value in stats.items()})
    return [margins[t.text] for _, t in pairs]
