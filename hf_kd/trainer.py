"""`DistillationTrainer`: a `transformers.Trainer` that distils a frozen teacher into the model it trains."""

from __future__ import annotations

from collections import defaultdict
from functools import partial
from collections.abc import Callable
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

from .configuration_distillation import DistillationConfig
from .data import InMemoryDataset, collate_batches
from .losses import distillation_loss
from .teacher import (
    TEACHER_INPUT_PREFIX,
    TEACHER_LOGITS_COLUMN,
    add_teacher_logits,
    cast_floating_inputs,
    check_teacher_logits,
    has_transform,
    load_teacher,
    logits_of,
    prepare_teacher,
)

logger = logging.get_logger(__name__)


def generic_labels(id2label: dict | None) -> bool:
    """True for the `LABEL_0, LABEL_1, ...` names a config gets when nobody named the labels."""
    return not id2label or all(str(v) == f"LABEL_{k}" for k, v in id2label.items())


def check_compatible(student: nn.Module, teacher: nn.Module) -> None:
    """Refuse a teacher whose outputs do not line up with the student's classes."""
    if teacher is student:
        raise ValueError(
            "teacher_model is the student model itself (the same object): pass a separate, frozen teacher model."
        )
    s_cfg, t_cfg = getattr(student, "config", None), getattr(teacher, "config", None)
    if s_cfg is None or t_cfg is None:
        return
    s_name, t_name = type(student).__name__, type(teacher).__name__
    s_n, t_n = getattr(s_cfg, "num_labels", None), getattr(t_cfg, "num_labels", None)
    if s_n is not None and t_n is not None and s_n != t_n:
        raise ValueError(
            f"The student ({s_name}) has num_labels={s_n} but the teacher ({t_name}) has num_labels={t_n}: "
            "their logits cannot be compared."
        )
    s_labels = {int(k): v for k, v in (getattr(s_cfg, "id2label", None) or {}).items()}
    t_labels = {int(k): v for k, v in (getattr(t_cfg, "id2label", None) or {}).items()}
    # Generic names say nothing about the order of the classes; only two real label lists can disagree.
    if not generic_labels(s_labels) and not generic_labels(t_labels) and s_labels != t_labels:
        raise ValueError(
            f"The student ({s_name}) and the teacher ({t_name}) order their classes differently: student "
            f"id2label={s_labels}, teacher id2label={t_labels}. Distilling would train against the wrong classes; "
            "give both models the same id2label."
        )


def _collate_keeping(features, keep: frozenset, row_collator: Callable):
    """A prebuilt batch (dict) keeps the keys in `keep`; a list of rows goes to `row_collator`."""
    if isinstance(features, dict):
        return {key: value for key, value in features.items() if key in keep}
    return row_collator(features)


class DistillationTrainer(Trainer):
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

        if teacher_model is None:
            teacher_model = args.teacher_model_name_or_path
        if isinstance(teacher_model, str):
            teacher_model = load_teacher(teacher_model, model, args.teacher_model_init_kwargs)
        elif teacher_model is not None and args.teacher_model_init_kwargs:
            raise ValueError(
                "teacher_model_init_kwargs only applies when the teacher is loaded from a name or path, but "
                "teacher_model is already a model instance."
            )
        if teacher_model is not None:
            check_compatible(model, teacher_model)
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
        self.teacher_model = None
        if teacher_model is not None:
            dtype = getattr(torch, args.teacher_dtype) if args.teacher_dtype else None
            self.teacher_model = prepare_teacher(teacher_model, self.accelerator, dtype=dtype)
        self.train_dataset = self._with_teacher_logits(self.train_dataset)
        # Unweighted loss parts, accumulated per step and averaged over each logging window (see `log`).
        self._metrics: dict[str, dict[str, list[torch.Tensor]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._num_parameters: tuple[nn.Module, int] | None = None  # see `floating_point_ops`

    def _with_teacher_logits(self, dataset):
        """Validate the train dataset's `teacher_logits`, computing them first when `precompute_teacher_logits`."""
        args: DistillationConfig = self.args
        if dataset is None:
            return dataset
        if args.precompute_teacher_logits and TEACHER_LOGITS_COLUMN not in (getattr(dataset, "column_names", None) or []):
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
            # Rank 0 computes and caches; the other processes then load the cache instead of recomputing.
            with args.main_process_first(desc="teacher logits"):
                dataset = add_teacher_logits(
                    dataset, self.teacher_model, batch_size=args.teacher_batch_size, dtype=args.teacher_logits_dtype
                )
        columns = getattr(dataset, "column_names", None)
        if columns is None:  # a plain torch Dataset: its batches are checked in `compute_loss`
            return dataset
        num_labels = getattr(getattr(self.model, "config", None), "num_labels", None)
        if isinstance(dataset, InMemoryDataset) and TEACHER_LOGITS_COLUMN in columns:
            check_teacher_logits(dataset.columns[TEACHER_LOGITS_COLUMN], num_labels)
        elif TEACHER_LOGITS_COLUMN in columns:
            check_teacher_logits(dataset.with_format("numpy")[TEACHER_LOGITS_COLUMN][:], num_labels)
        elif self.teacher_model is None:
            raise ValueError(
                "DistillationTrainer needs a teacher: pass teacher_model (or args.teacher_model_name_or_path), or a "
                "train dataset with a teacher_logits column."
            )
        return dataset

    def _set_signature_columns_if_needed(self):
        # Keep the teacher's columns when `remove_unused_columns` drops what the student's forward does not take.
        if self._signature_columns is None:
            super()._set_signature_columns_if_needed()
            dataset_columns = getattr(self.train_dataset, "column_names", None) or []
            self._signature_columns += [TEACHER_LOGITS_COLUMN] + [
                c for c in dataset_columns if c.startswith(TEACHER_INPUT_PREFIX)
            ]

    def _get_collator_with_removed_columns(self, data_collator: Callable, description: str | None = None) -> Callable:
        # The Trainer's column-removing wrapper iterates over rows; a whole batch from an InMemoryDataset gets
        # its unused keys dropped in one go instead.
        removing = super()._get_collator_with_removed_columns(data_collator, description)
        if removing is data_collator:
            return data_collator
        return partial(_collate_keeping, keep=frozenset(self._signature_columns), row_collator=removing)

    def _teacher_logits(self, student_inputs: dict[str, Any], teacher_inputs: dict[str, Any]) -> torch.Tensor:
        if self.teacher_model is None:
            raise ValueError(
                "The batch has no 'teacher_logits' and the trainer has no teacher: pass teacher_model (or "
                "args.teacher_model_name_or_path), or add teacher logits to the dataset."
            )
        with torch.no_grad():
            outputs = self.teacher_model(**cast_floating_inputs(teacher_inputs or student_inputs, self.teacher_model))
        return logits_of(outputs)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        args: DistillationConfig = self.args
        labels = inputs.get("labels")
        if labels is None and args.alpha < 1.0:
            raise ValueError(
                f"The batch has no 'labels', but alpha={args.alpha} < 1 gives the hard-label term weight "
                f"{1 - args.alpha}: provide labels, or set alpha=1.0 for pure distillation. Batch keys: "
                f"{sorted(inputs)}."
            )
        teacher_logits = inputs.get(TEACHER_LOGITS_COLUMN)
        student_inputs, teacher_inputs = {}, {}
        for key, value in inputs.items():
            if key == "labels" or key == TEACHER_LOGITS_COLUMN:
                continue
            if key.startswith(TEACHER_INPUT_PREFIX):
                teacher_inputs[key[len(TEACHER_INPUT_PREFIX) :]] = value
            else:
                student_inputs[key] = value

        outputs = model(**student_inputs)
        student_logits = logits_of(outputs)
        if teacher_logits is None:
            teacher_logits = self._teacher_logits(student_inputs, teacher_inputs)
            if not torch.isfinite(teacher_logits).all():
                raise ValueError(
                    f"The teacher's logits contain NaN or inf at step {self.state.global_step} (live teacher): "
                    "check the teacher's weights and dtype (fp16 overflows above 65504)."
                )
        if teacher_logits.shape != student_logits.shape:
            raise ValueError(
                f"The batch's teacher_logits have shape {tuple(teacher_logits.shape)} but the student's logits "
                f"have shape {tuple(student_logits.shape)}: the teacher logits must have one column per label "
                f"({student_logits.shape[-1]})."
            )

        loss, hard, soft = distillation_loss(
            student_logits,
            teacher_logits,
            labels,
            temperature=args.temperature,
            alpha=args.alpha,
            loss_type=args.loss_type,
        )
        metrics = self._metrics["train" if model.training else "eval"]
        if hard is not None:
            metrics["loss_ce"].append(hard.detach())
        metrics["loss_kd"].append(soft.detach())
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
        # Averaged over the steps since the last log, then over processes, like the Trainer's own `loss`.
        window = {
            key: self.accelerator.reduce(torch.stack(values).mean(), reduction="mean").item()
            for key, values in self._metrics[mode].items()
            if values
        }
        # `evaluate(metric_key_prefix="test")` logs `test_loss`: follow its prefix.
        prefix = next((key[: -len("loss")] for key in logs if key.endswith("_loss")), "eval_") if mode == "eval" else ""
        logs.update({f"{prefix}{key}": value for key, value in window.items()})
        super().log(logs, start_time)
        self._metrics[mode].clear()

    def predict(self, *args, **kwargs):
        # `predict` does not log: drop the loss parts it accumulated so they do not leak into the next evaluation.
        output = super().predict(*args, **kwargs)
        self._metrics["eval"].clear()
        return output

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
        from .modelcard import hub_push_errors

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
        """Write the distillation model card to `args.output_dir/README.md` (see [`hf_kd.modelcard`]).

        `report` is a [`~hf_kd.report.DistillationReport`] (or its JSON path, directory or dict) whose results table,
        notes and plot go into the card; it defaults to `distillation_report.json` in the output directory. `kwargs` go
        to [`hf_kd.modelcard.create_model_card`] (`eval_split`, `repo_id`: the id the card's snippet loads). `license`
        defaults to Apache-2.0. The other arguments are the Trainer's.
        """
        from .modelcard import create_model_card

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
