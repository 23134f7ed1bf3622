"""`DistillationTrainer`: a `transformers.Trainer` that distils a frozen teacher into the model it trains."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from typing import Any

import datasets
import torch
from torch import nn
from transformers import (
    DataCollatorWithPadding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    default_data_collator,
)
from transformers.trainer_utils import EvalPrediction
from transformers.utils import logging

from ..batch import TEACHER_LOGITS, DistillationBatch, answer_columns, distillation_columns, split_batch
from ..data import (
    InMemoryDataset,
    check_dataset_labels,
    check_label_range,
    check_not_empty,
    collate_batches,
    read_column,
)
from ..losses.logit import distillation_loss
from ..placement import is_sharded, prepare_teacher
from ..teacher.ensemble import resolve_teacher
from ..teacher.loading import check_compatible, check_same_inputs, check_teacher_logits, logits_of, run_teacher
from ..teacher.precompute import add_teacher_logits, check_fixed_inputs, has_transform
from ..utils import remove_if_left_empty
from .configuration_distillation import DistillationConfig
from .feature_trainer import FeatureDistillationMixin

logger = logging.get_logger(__name__)


def log_loss_terms(accelerator, terms: dict[str, list[torch.Tensor]], logs: dict[str, float], mode: str) -> dict:
    """Add the loss terms accumulated since the last log to `logs`, each averaged over those steps, then over
    processes, like the Trainer's own `loss`; in evaluation with the prefix of its `*_loss` key (`eval_`, or `test_`
    for `evaluate(metric_key_prefix="test")`). Returns the averages by term. Shared by hf_kd's trainers."""
    window = {
        key: accelerator.reduce(torch.stack(values).mean(), reduction="mean").item()
        for key, values in terms.items()
        if values
    }
    prefix = next((key[: -len("loss")] for key in logs if key.endswith("_loss")), "eval_") if mode == "eval" else ""
    logs.update({f"{prefix}{key}": value for key, value in window.items()})
    return window


def _collate_keeping(features, keep: frozenset, row_collator: Callable):
    """A prebuilt batch (dict) keeps the keys in `keep`; a list of rows goes to `row_collator`."""
    if isinstance(features, dict):
        return {key: value for key, value in features.items() if key in keep}
    return row_collator(features)


def _named_eval_datasets(eval_dataset) -> list[tuple[str, Any]]:
    if isinstance(eval_dataset, dict):
        return [(f"eval_dataset[{key!r}]", value) for key, value in eval_dataset.items()]
    return [] if eval_dataset is None else [("eval_dataset", eval_dataset)]


class DistillationTrainer(FeatureDistillationMixin, Trainer):
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

    _tag_names = ["hf_kd", "knowledge-distillation"]

    # `compute_loss` returns a batch mean; the Trainer must divide it by the accumulation steps.
    loss_is_scaled_for_ga = False

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
        if data_collator is None:
            # The Trainer's own default, plus the pass-through of batches that an InMemoryDataset built whole.
            fallback = (
                DataCollatorWithPadding(processing_class)
                if isinstance(processing_class, PreTrainedTokenizerBase)
                else default_data_collator
            )
            data_collator = partial(collate_batches, fallback=fallback)

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
        # The loss never goes through the student's forward, so the student's loss kwargs do not matter; this also
        # skips the Trainer's per-step label counting for `num_items_in_batch`.
        self.model_accepts_loss_kwargs = False
        with remove_if_left_empty(args.output_dir):  # a refused trainer leaves no empty output directory behind
            self._prepare_distillation(teacher_model)
        # Plain torch datasets cannot be read column-wise up front: their labels are checked batch by batch.
        self._check_batch_labels = getattr(self.train_dataset, "column_names", None) is None
        # Unweighted loss parts, accumulated per step and averaged over each logging window (see `log`).
        self._metrics: dict[str, dict[str, list[torch.Tensor]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self._num_parameters: tuple[nn.Module, int] | None = None  # see `floating_point_ops`

    def _prepare_distillation(self, teacher_model: nn.Module | None) -> None:
        """The teacher placed by Accelerate, the feature term's connectors (before the optimizer exists), the train
        dataset's teacher logits, and the checks of every dataset against the student."""
        self.teacher_model = None
        if teacher_model is not None:
            dtype = getattr(torch, self.args.teacher_dtype) if self.args.teacher_dtype else None
            self.teacher_model = prepare_teacher(teacher_model, self.accelerator, dtype, self.args.teacher_sharding)
        self._feature_term = self._build_feature_term()
        self.train_dataset = self._with_teacher_logits(self.train_dataset)
        for name, dataset in _named_eval_datasets(self.eval_dataset):
            self._check_carried_logits(dataset, name)
        num_labels = getattr(getattr(self.model, "config", None), "num_labels", None)
        if num_labels:
            check_dataset_labels(
                [("train_dataset", self.train_dataset), *_named_eval_datasets(self.eval_dataset)], num_labels
            )

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
                data_collator=self.data_collator, features=self._cache_teacher_features(),
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
        if self._feature_term is not None:  # white-box: args.feature_pairs (see hf_kd.training.feature_trainer)
            terms["feature"] = self._feature_loss(batch)
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
        outputs = model(**batch.student_inputs)
        terms = self.compute_loss_terms(outputs, self.compute_teacher_outputs(batch), batch)
        loss = terms.pop("loss")
        metrics = self._metrics["train" if model.training else "eval"]
        for name, value in terms.items():
            metrics[f"loss_{name}"].append(value.detach())
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

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        window = log_loss_terms(self.accelerator, self._metrics[mode], logs, mode)
        if mode == "train":
            self._check_finite_loss(window)
        super().log(logs, start_time)
        self._metrics[mode].clear()

    def _check_labels_of_batch(self, labels: torch.Tensor) -> None:
        # Only for plain torch datasets, whose labels could not be read up front (a device sync per step).
        num_labels = getattr(getattr(self.model, "config", None), "num_labels", None)
        if num_labels and not labels.is_floating_point():
            check_label_range(labels.detach().cpu(), num_labels, f"The batch at step {self.state.global_step + 1}")

    def _check_finite_loss(self, window: dict[str, float]) -> None:
        """Stop a diverged run at the logging step where its loss terms stop being finite, before anything is saved,
        measured or reported. Checked on the averages `log` already fetched: no extra device sync per step."""
        if not all(math.isfinite(value) for value in window.values()):
            terms = ", ".join(f"{key} {value}" for key, value in window.items())
            raise FloatingPointError(
                f"DistillationTrainer: non-finite training loss at step {self.state.global_step} ({terms}, averaged "
                "since the previous log). The run is stopped: its model would be NaN. Lower the learning rate, check "
                "temperature and alpha, the inputs (NaN pixels or features), and fp16 overflow (use bf16 or fp32)."
            )

    def predict(self, *args, **kwargs):
        # `predict` does not log: drop the loss parts it accumulated so they do not leak into the next evaluation.
        output = super().predict(*args, **kwargs)
        self._metrics["eval"].clear()
        return output

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # Under FSDP2 the student is saved as its own class, not torch's generated `FSDP<Name>` (see
        # `hf_kd.sharding.saved_as_own_class`): its config's auto_map must point at its own modeling file.
        from ..placement import saved_as_own_class

        with saved_as_own_class(self.model):
            super()._save(output_dir, state_dict)

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs,
    ):
        """[`~transformers.Trainer.push_to_hub`] (save the student, write the distillation card, upload the output
        directory). If no token is found, or the Hub cannot be reached or refuses the push, the student and its card
        are saved locally and a [`hf_kd.modelcard.HubPushError`] says what failed. `kwargs` go to the card (e.g.
        `report=`, `dataset_tags=`, `license=`)."""
        from ..report.modelcard import hub_push_errors

        with hub_push_errors(self, token=token, card_kwargs=kwargs):
            return super().push_to_hub(
                commit_message=commit_message, blocking=blocking, token=token, revision=revision, private=private,
                **kwargs,
            )  # fmt: skip

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        report: Any = None,
        **kwargs,
    ) -> None:
        """Write the distillation model card to `args.output_dir/README.md` (see [`hf_kd.report.modelcard`]).

        `report` is a [`~hf_kd.report.DistillationReport`] (or its JSON path, directory or dict) whose results table,
        notes and plot go into the card; it defaults to `distillation_report.json` in the output directory. `kwargs` go
        to [`hf_kd.modelcard.create_model_card`] (`eval_split`, `repo_id`: the id the card's snippet loads). `license`
        defaults to Apache-2.0. The other arguments are the Trainer's.
        """
        from ..report.modelcard import create_model_card

        create_model_card(
            self,
            model_name=model_name,
            report=report,
            language=language,
            license=license,
            tags=tags,
            finetuned_from=finetuned_from,
            tasks=tasks,
            dataset_tags=dataset_tags,
            dataset=dataset,
            dataset_args=dataset_args,
            **kwargs,
        )
