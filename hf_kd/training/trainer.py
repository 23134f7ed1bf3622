"""`DistillationTrainer`: a `transformers.Trainer` that distils a frozen teacher into the model it trains."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from typing import Any

import datasets
import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, TrainerCallback
from transformers.trainer_utils import EvalPrediction
from transformers.utils import logging

from ..batch import TEACHER_LOGITS, DistillationBatch, answer_columns, distillation_columns, split_batch
from ..data import (
    InMemoryDataset,
    check_dataset_labels,
    check_label_range,
    check_not_empty,
    read_column,
)
from ..losses.logit import distillation_loss
from ..placement import is_sharded, prepare_teacher
from ..teacher.ensemble import resolve_teacher
from ..teacher.loading import check_compatible, check_same_inputs, check_teacher_logits, logits_of, run_teacher
from ..teacher.precompute import add_teacher_logits, check_fixed_inputs, has_transform
from ..utils import remove_if_left_empty
from .base import HfKdTrainer
from .configuration_distillation import DistillationConfig
from .feature_distillation import PROBE_EXAMPLES, FeatureDistillation, carries_logits

logger = logging.get_logger(__name__)


def _collate_keeping(features, keep: frozenset, row_collator: Callable):
    """A prebuilt batch (dict) keeps the keys in `keep`; a list of rows goes to `row_collator`."""
    if isinstance(features, dict):
        return {key: value for key, value in features.items() if key in keep}
    return row_collator(features)


def _named_eval_datasets(eval_dataset) -> list[tuple[str, Any]]:
    if isinstance(eval_dataset, dict):
        return [(f"eval_dataset[{key!r}]", value) for key, value in eval_dataset.items()]
    return [] if eval_dataset is None else [("eval_dataset", eval_dataset)]


class DistillationTrainer(HfKdTrainer):
    """A [`~transformers.Trainer`] whose loss distils a frozen teacher into the model being trained.

    The loss is `(1 - alpha) * CE(student, labels) + alpha * T**2 * KL(softmax(teacher / T) || softmax(student / T))`
    (see [`hf_kd.losses.distillation_loss`]), with `alpha`, `T` and the soft-loss type read from
    [`DistillationConfig`]. Everything else (the loop, devices, mixed precision, checkpoints, logging) is the
    Trainer's. Checkpoints and `save_model` hold the student only.

    Args:
        model ([`~transformers.PreTrainedModel`] or `nn.Module`): the student, the model that is trained.
        teacher_model ([`~transformers.PreTrainedModel`], `nn.Module` or `str`, *optional*): the teacher, or a local
            directory / Hub id loaded with the Auto class of the student's task. Defaults to
            `args.teacher_model_name_or_path`. It is frozen (`requires_grad=False`, `eval()`) for the whole run.
            A list of teachers (models or names) is distilled as one [`~hf_kd.ensemble.TeacherEnsemble`] built with
            `args.ensemble_method`, `args.teacher_weights` and `args.temperature`.
        args ([`DistillationConfig`]): training and distillation settings.

    The other arguments are those of [`~transformers.Trainer`].

    A batch may carry the teacher's logits in a `teacher_logits` column (computed once up front, or produced
    elsewhere): the teacher is then not run for that batch. Columns prefixed `teacher_` (e.g. `teacher_input_ids`)
    are the teacher's own inputs, for a teacher with another tokenizer.
    """

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | None = None,
        teacher_model: PreTrainedModel | nn.Module | str | None = None,
        args: DistillationConfig | None = None,
        data_collator: Callable | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        model_init: Callable[..., PreTrainedModel] | None = None,
        compute_metrics: Callable[[EvalPrediction], dict] | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None] = (None, None),
        optimizer_cls_and_kwargs: tuple[type[torch.optim.Optimizer], dict[str, Any]] | None = None,
        preprocess_logits_for_metrics: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ):
        if args is None:
            args = DistillationConfig(output_dir="tmp_trainer")
        if not isinstance(args, DistillationConfig):
            raise TypeError(
                f"args must be a DistillationConfig (it carries temperature, alpha and loss_type), got "
                f"{type(args).__name__}."
            )
        if model is None:
            raise ValueError("DistillationTrainer needs the student as `model`.")

        teacher_model = resolve_teacher(teacher_model, model, args)
        if train_dataset is not None and hasattr(train_dataset, "__len__"):
            check_not_empty(train_dataset, "train_dataset")
        if teacher_model is not None:
            check_compatible(model, teacher_model)
            check_same_inputs(model, teacher_model, processing_class, getattr(train_dataset, "column_names", None))
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            model_init=model_init,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        with remove_if_left_empty(args.output_dir):  # a refused trainer leaves no empty output directory behind
            self._prepare_distillation(teacher_model)
        # Plain torch datasets cannot be read column-wise up front: their labels are checked batch by batch.
        self._check_batch_labels = getattr(self.train_dataset, "column_names", None) is None
        self._num_parameters: tuple[nn.Module, int] | None = None  # see `floating_point_ops`

    def _prepare_distillation(self, teacher_model: nn.Module | None) -> None:
        """The teacher placed by Accelerate, the feature term's connectors (before the optimizer exists), the train
        dataset's teacher logits, and the checks of every dataset against the student."""
        self.teacher_model = None
        if teacher_model is not None:
            dtype = getattr(torch, self.args.teacher_dtype) if self.args.teacher_dtype else None
            self.teacher_model = prepare_teacher(teacher_model, self.accelerator, dtype, self.args.teacher_sharding)
        self.feature_distillation = self._build_feature_distillation()
        self.train_dataset = self._with_teacher_logits(self.train_dataset)
        for name, dataset in _named_eval_datasets(self.eval_dataset):
            self._check_carried_logits(dataset, name)
        num_labels = getattr(getattr(self.model, "config", None), "num_labels", None)
        if num_labels:
            check_dataset_labels(
                [("train_dataset", self.train_dataset), *_named_eval_datasets(self.eval_dataset)], num_labels
            )

    def _build_feature_distillation(self) -> FeatureDistillation | None:
        """The feature term of `args.feature_pairs` (None without), its connectors trained with the student."""
        if not self.args.feature_pairs:
            return None
        if self.teacher_model is None or self.train_dataset is None:
            raise ValueError("feature_pairs need a teacher model and a train_dataset (the shape probe runs on it).")
        features = FeatureDistillation.build(
            self.args, self.model, self.accelerator.unwrap_model(self.teacher_model), self._probe_batch(),
            self._teacher_input_batches, len(self.train_dataset),
        )  # fmt: skip
        connectors = features.connectors()
        if connectors is not None:
            features.term.connectors_forward = self.add_trainable_module(*connectors)
        logger.info(features.describe(self.args, carries_logits(self.train_dataset)))
        return features

    def _probe_batch(self) -> DistillationBatch:
        """The first few training examples, collated and placed as a training batch."""
        dataset = self.train_dataset
        indices = list(range(min(len(dataset), PROBE_EXAMPLES)))
        rows = dataset.__getitems__(indices) if hasattr(dataset, "__getitems__") else [dataset[i] for i in indices]
        collator = self._get_collator_with_removed_columns(self.data_collator, "training")
        return split_batch(self._prepare_inputs(collator(rows)))

    def _teacher_input_batches(self):
        """The teacher's inputs over the whole train set, in order (the overhaul margins' one pass)."""
        collator = self._get_collator_with_removed_columns(self.data_collator, "training")
        size = self.args.teacher_batch_size
        size = size if isinstance(size, int) else self.args.per_device_eval_batch_size  # "auto": the eval batch size
        for batch in DataLoader(self.train_dataset, batch_size=size, collate_fn=collator):
            yield split_batch(self._prepare_inputs(batch)).inputs_for_teacher()

    def _teacher_features_to_cache(self) -> list[str]:
        if self.feature_distillation is None:
            return []
        self._signature_columns = None  # listed by the shape probe before the feature columns existed
        return self.feature_distillation.cache_teacher_features()

    def _with_teacher_logits(self, dataset):
        """Validate the train dataset's `teacher_logits`, computing them first when `precompute_teacher_logits`."""
        args: DistillationConfig = self.args
        if dataset is None:
            return dataset
        carries_logits = TEACHER_LOGITS in (getattr(dataset, "column_names", None) or [])
        if args.precompute_teacher_logits or carries_logits:
            check_fixed_inputs(dataset, self.data_collator, carries_logits)
        if args.precompute_teacher_logits and not carries_logits:
            dataset = self._precompute_teacher_logits(dataset)
        columns = getattr(dataset, "column_names", None)
        if columns is None:  # a plain torch Dataset: its batches are checked in `compute_loss`
            return dataset
        if TEACHER_LOGITS in columns:
            self._check_carried_logits(dataset, "train_dataset")
            if self.feature_distillation is not None and self.feature_distillation.read_carried_features(dataset):
                self._signature_columns = None  # listed by the shape probe before the feature columns were read
        elif self.teacher_model is None and not answer_columns(columns):  # black box: the answers are the teacher
            raise ValueError(
                "DistillationTrainer needs a teacher: pass teacher_model (or args.teacher_model_name_or_path), or a "
                "train dataset with a teacher_logits column (or a black-box teacher's answers, see "
                "hf_kd.teacher.annotate)."
            )
        return dataset

    def _check_carried_logits(self, dataset, name: str) -> None:
        """A dataset's `teacher_logits`, when it carries them: one column per class of the student, all finite."""
        values = read_column(dataset, TEACHER_LOGITS)
        if values is not None:
            check_teacher_logits(values, getattr(getattr(self.model, "config", None), "num_labels", None), name)

    def _precompute_teacher_logits(self, dataset):
        """hf_kd's one precompute path ([`add_teacher_logits`]), batched by the trainer's own collator; the feature
        term's teacher features (vectors) are computed in the same pass."""
        args: DistillationConfig = self.args
        if not isinstance(dataset, (datasets.Dataset, InMemoryDataset)):
            raise ValueError(
                "precompute_teacher_logits needs the train dataset as a datasets.Dataset or an "
                f"hf_kd.data.InMemoryDataset (whose rows it can read in batches), got {type(dataset).__name__}: "
                "add a teacher_logits column yourself (hf_kd.add_teacher_logits), or keep the teacher live."
            )
        if self.teacher_model is None:
            raise ValueError("precompute_teacher_logits=True needs a teacher_model to compute them with.")
        if has_transform(dataset):
            raise ValueError(
                "precompute_teacher_logits=True, but the train dataset has an on-the-fly transform "
                "(set_transform / with_transform, e.g. random augmentation): logits computed once would not "
                "match the inputs the student trains on. Turn the augmentation off, or set "
                "precompute_teacher_logits=False to run the teacher on every batch."
            )
        # Rank 0 computes and caches; the other processes then load the cache instead of recomputing. A sharded
        # (ZeRO-3) teacher's forward gathers each layer from every process: all compute together instead, at one fixed
        # batch size (an 'auto' batch size is timed per process and could differ, and so would the forward count).
        batch_size, together = args.teacher_batch_size, is_sharded(self.teacher_model)
        if together and not isinstance(batch_size, int):
            batch_size = args.per_device_eval_batch_size
        with nullcontext() if together else args.main_process_first(desc="teacher logits"):
            return add_teacher_logits(
                dataset, self.teacher_model, batch_size=batch_size, dtype=args.teacher_logits_dtype,
                data_collator=self.data_collator, features=self._teacher_features_to_cache(),
            )  # fmt: skip

    def _set_signature_columns_if_needed(self):
        # Keep the teacher's columns when `remove_unused_columns` drops what the student's forward does not take.
        if self._signature_columns is None:
            super()._set_signature_columns_if_needed()
            dataset_columns = getattr(self.train_dataset, "column_names", None) or []
            self._signature_columns += [TEACHER_LOGITS, *distillation_columns(dataset_columns)]

    def _get_collator_with_removed_columns(self, data_collator: Callable, description: str | None = None) -> Callable:
        # The Trainer's column-removing wrapper iterates over rows; a whole batch from an InMemoryDataset gets
        # its unused keys dropped in one go instead.
        removing = super()._get_collator_with_removed_columns(data_collator, description)
        if removing is data_collator:
            return data_collator
        return partial(_collate_keeping, keep=frozenset(self._signature_columns), row_collator=removing)

    def compute_teacher_outputs(self, batch: DistillationBatch):
        """The teacher's outputs for a batch: the `teacher_logits` it carries, or the live teacher's forward on its
        inputs (its own `teacher_*` ones when there are any)."""
        if batch.teacher_logits is not None:
            return {"logits": batch.teacher_logits}
        if batch.teacher_answers is not None:  # a black-box teacher's answers (hf_kd.losses.partial)
            return {"answers": batch.teacher_answers}
        if self.teacher_model is None:
            raise ValueError(
                "The batch has no 'teacher_logits' and the trainer has no teacher: pass teacher_model (or "
                "args.teacher_model_name_or_path), or add teacher logits to the dataset."
            )
        # An ensemble weighing its teachers by their confidence on the true label reads the labels too.
        labels = {"labels": batch.labels} if getattr(self.teacher_model, "needs_labels", False) else {}
        outputs = run_teacher(self.teacher_model, batch.inputs_for_teacher(), **labels)
        if not torch.isfinite(logits_of(outputs)).all():
            raise ValueError(
                f"The teacher's logits contain NaN or inf at step {self.state.global_step} (live teacher): "
                "check the teacher's weights and dtype (fp16 overflows above 65504)."
            )
        return outputs

    def compute_loss_terms(self, student_outputs, teacher_outputs, batch: DistillationBatch) -> dict[str, torch.Tensor]:
        """The loss terms of one batch: `"loss"`, the weighted total, and each unweighted term by name (logged as
        `loss_<name>`). Here the logit objective of [`hf_kd.losses.distillation_loss`]; a subclass adds its terms."""
        args: DistillationConfig = self.args
        answers = teacher_outputs.get("answers") if isinstance(teacher_outputs, dict) else None  # black box
        student_logits = logits_of(student_outputs)
        teacher_logits = None if answers is not None else logits_of(teacher_outputs)
        if teacher_logits is not None and teacher_logits.shape != student_logits.shape:
            raise ValueError(
                f"The batch's teacher_logits have shape {tuple(teacher_logits.shape)} but the student's logits "
                f"have shape {tuple(student_logits.shape)}: the teacher logits must have one column per label "
                f"({student_logits.shape[-1]})."
            )
        terms = distillation_loss(
            student_logits,
            teacher_logits,
            batch.labels,
            temperature=args.temperature,
            alpha=args.alpha,
            loss_type=args.loss_type,
            beta=args.beta,
            teacher_answers=answers,
            top_k_loss=args.top_k_loss,
        )
        if self.feature_distillation is not None:  # white-box: args.feature_pairs
            terms["feature"] = self.feature_distillation.loss(batch, training=self.model.training)
            terms["loss"] = terms["loss"] + args.feature_weight * terms["feature"]
        return terms

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        args: DistillationConfig = self.args
        batch = split_batch(inputs)
        if batch.labels is None and args.alpha < 1.0:
            raise ValueError(
                f"The batch has no 'labels', but alpha={args.alpha} < 1 gives the hard-label term weight "
                f"{1 - args.alpha}: provide labels, or set alpha=1.0 for pure distillation. Batch keys: "
                f"{sorted(inputs)}."
            )
        if self._check_batch_labels and batch.labels is not None and model.training:
            self._check_labels_of_batch(batch.labels)
        features = self.feature_distillation
        with features.collecting() if features is not None else nullcontext():  # hooks for the feature term
            outputs = model(**batch.student_inputs)
            terms = self.compute_loss_terms(outputs, self.compute_teacher_outputs(batch), batch)
        loss = self.record_loss_terms(terms, training=model.training)
        return (loss, outputs) if return_outputs else loss

    def floating_point_ops(self, inputs: dict[str, torch.Tensor | Any]) -> int:
        # The Trainer's count, with the student's parameter count computed once per model instead of on every step
        # (a walk over all parameters: on small models it is a measurable part of the step).
        main_input = getattr(self.model, "main_input_name", "input_ids")
        if main_input not in inputs or not hasattr(self.model, "num_parameters"):
            return 0
        if self._num_parameters is None or self._num_parameters[0] is not self.model:
            self._num_parameters = (self.model, self.model.num_parameters(exclude_embeddings=True))
        return 6 * inputs[main_input].numel() * self._num_parameters[1]

    def _check_labels_of_batch(self, labels: torch.Tensor) -> None:
        # Only for plain torch datasets, whose labels could not be read up front (a device sync per step).
        num_labels = getattr(getattr(self.model, "config", None), "num_labels", None)
        if num_labels and not labels.is_floating_point():
            check_label_range(labels.detach().cpu(), num_labels, f"The batch at step {self.state.global_step + 1}")
