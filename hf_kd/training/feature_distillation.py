"""The feature term of a `DistillationTrainer` run (white-box distillation), bound to the run's models.

Built at the trainer's construction, before the optimizer exists: the pairs resolved and the connectors sized by one
probe forward of both models on the first training examples; the connectors registered with the trainer as a
trainable module (in the optimizer, wrapped by Accelerate, checkpointed, restored, never saved with the student). Each
step's loss reads the features collected during the forwards, or the teacher's features cached with its logits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from ..batch import TEACHER_LOGITS, DistillationBatch, teacher_feature_column
from ..data import read_column
from ..teacher.loading import run_teacher
from .feature_term import CONNECTORS_NAME, FeatureTerm

logger = logging.get_logger(__name__)

PROBE_EXAMPLES = 8


def _check_cacheable(term: FeatureTerm, num_examples: int, dtype: str) -> None:
    """With `precompute_teacher_logits`, the teacher's features are cached with its logits when each is a vector
    per example; maps and token states (`C*H*W` or `L*D` values per example) are refused with their size."""
    refused = term.uncacheable_teacher_features()
    if not refused:
        return
    itemsize = getattr(torch, dtype).itemsize
    sizes = {name: num_examples * torch.Size(shape).numel() * itemsize for name, shape in refused.items()}
    listed = ", ".join(f"{name} {refused[name]}: {size / 2**20:.1f} MiB" for name, size in sizes.items())
    raise ValueError(
        f"precompute_teacher_logits=True with feature_pairs: hf_kd caches the teacher's features with its logits "
        f"only when each is a vector per example, but {listed} (per-example shape as probed on the first batch, "
        f"and its size for the {num_examples} training examples in {dtype}; {sum(sizes.values()) / 2**20:.1f} MiB in "
        "all) are not. Set precompute_teacher_logits=False (the teacher then runs on every batch), or pair vector "
        "features (a pooled or penultimate feature)."
    )


class FeatureDistillation:
    """The run's [`FeatureTerm`] (`term`) and the teacher it reads when the batch carries no cached features."""

    def __init__(self, term: FeatureTerm, teacher: nn.Module):
        self.term, self.teacher = term, teacher
        self._warned_live_features = False

    @classmethod
    def build(
        cls,
        args,
        student: nn.Module,
        teacher: nn.Module,
        sample: DistillationBatch,
        teacher_batches: Callable[[], Iterable[dict[str, Any]]],
        num_examples: int,
    ) -> FeatureDistillation:
        """The term of `args.feature_pairs` between `student` and `teacher` (unwrapped), sized on `sample` (a prepared
        training batch); `teacher_batches()` yields the teacher's inputs over the train set (overhaul margins)."""
        if type(teacher).__name__ == "TeacherEnsemble":
            raise ValueError("feature_pairs compare one teacher's features: they cannot be used with an ensemble.")
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        # Under the run's seed, without touching the global random state: a run with features draws the same data
        # order and dropout masks as one without.
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(args.seed)
            term = FeatureTerm.build(
                student, teacher, feature_pairs=args.feature_pairs, loss=args.feature_loss,
                connector=args.feature_connector, student_inputs=sample.student_inputs,
                teacher_inputs=sample.inputs_for_teacher(), margin_batches=teacher_batches,
            )  # fmt: skip
        if args.precompute_teacher_logits:
            _check_cacheable(term, num_examples, args.teacher_logits_dtype)
        return cls(term, teacher)

    def describe(self, args, carried_logits: bool) -> str:
        source = (
            "cached with its logits"
            if args.precompute_teacher_logits and not carried_logits
            else "live, on every batch"
        )
        parameters = sum(p.numel() for p in self.term.connectors.parameters())
        return (
            f"Feature term {args.feature_loss} (weight {args.feature_weight}) on {self.term.describe()}; the teacher's "
            f"features: {source}; {parameters} connector parameters, trained with the student and not saved with it."
        )

    def connectors(self) -> tuple[str, nn.Module] | None:
        """`(name, module)` of the connectors to train with the student, or None when they have no parameters."""
        connectors = self.term.connectors
        return (CONNECTORS_NAME.removesuffix(".safetensors"), connectors) if connectors.has_parameters() else None

    def cache_teacher_features(self) -> list[str]:
        """The teacher features to compute with the precomputed logits; from then on the term reads them from the
        batches instead of running the teacher."""
        return self.term.use_cached()

    def read_carried_features(self, dataset) -> bool:
        """Read the teacher's features from the `teacher_feature_<i>` columns a train dataset already carries
        (`add_teacher_logits(..., features=term.teacher_features())` run beforehand, in that order), as from the
        trainer's own cache: the teacher then does not run for them. Each column must hold the per-example shape the
        probe measured; returns whether the columns are read."""
        names = self.term.teacher_features()
        columns = [teacher_feature_column(index) for index in range(len(names))]
        if not set(columns) <= set(getattr(dataset, "column_names", None) or []):
            return False
        for name, column in zip(names, columns):
            values = read_column(dataset, column)
            if values is None:  # a stream: its columns cannot be read whole, the teacher runs
                return False
            if tuple(values.shape[1:]) != self.term.teacher_shapes[name]:
                raise ValueError(
                    f"the train dataset's {column} holds features of shape {tuple(values.shape[1:])} per example, but "
                    f"the feature term's teacher feature {name} has shape {self.term.teacher_shapes[name]}: cache the "
                    f"features in the term's order, {names}."
                )
        self.term.use_cached()
        logger.info(f"The teacher's features {names}: read from the train dataset's columns {columns}.")
        return True

    def collecting(self):
        return self.term.collecting()

    def loss(self, batch: DistillationBatch, training: bool) -> torch.Tensor:
        """The feature term of the batch whose forwards just ran: with the teacher features the batch carries (cached
        with its logits), else the teacher's own, run here when the batch carried its logits (so it did not run)."""
        term = self.term
        cached = term.cached_teacher_features(batch.teacher_targets)
        if cached is None and not term.has_teacher_features():
            if term.cached_columns and training and not self._warned_live_features:
                self._warned_live_features = True
                logger.warning(
                    f"A training batch carries no cached teacher features ({sorted(term.cached_columns.values())}): "
                    "the teacher runs for them. Does the data collator drop the teacher_feature_* columns?"
                )
            run_teacher(self.teacher, batch.inputs_for_teacher())
        mask = batch.student_inputs.get("attention_mask")
        return term(labels=batch.labels, attention_mask=mask, teacher_features=cached)


def carries_logits(dataset) -> bool:
    return TEACHER_LOGITS in (getattr(dataset, "column_names", None) or [])
