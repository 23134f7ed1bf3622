"""The Trainer side of white-box distillation, mixed into [`DistillationTrainer`]: the [`FeatureTerm`] built at
construction (before the optimizer exists), its connectors in the optimizer, wrapped by Accelerate, saved in every
`checkpoint-*` and restored on resume (the Trainer's own resume loads the model with `strict=False` and knows nothing
of them), and the features collected during each step. `save_model` / `push_to_hub` save the student alone: the
connectors are discarded with the trainer."""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Any

import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from ..batch import TEACHER_LOGITS, DistillationBatch, split_batch
from ..teacher.loading import run_teacher
from .feature_term import CONNECTORS_NAME, FeatureTerm

logger = logging.get_logger(__name__)

PROBE_EXAMPLES = 8


class ZeroConnectorGradients(TrainerCallback):
    """After each optimizer step, the connectors' gradients are cleared as the Trainer clears the model's
    (`model.zero_grad()`, which does not reach modules outside the model): without it they would add up over the run."""

    def __init__(self, connectors: torch.nn.Module):
        self.connectors = connectors

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.connectors.zero_grad()


class FeatureDistillationMixin:
    """Adds the feature term of `args.feature_pairs` to a `DistillationTrainer` (see [`hf_kd.features.names`])."""

    _feature_term: FeatureTerm | None = None
    _warned_live_features = False

    def _build_feature_term(self) -> FeatureTerm | None:
        """The run's feature term (None without `feature_pairs`): pairs resolved and connectors sized by one probe
        forward of both models on the first examples of the train set, under the run's seed without touching the
        global random state (a run with features draws the same data order and dropout masks as one without)."""
        args = self.args
        if not args.feature_pairs:
            return None
        if self.teacher_model is None or self.train_dataset is None:
            raise ValueError("feature_pairs need a teacher model and a train_dataset (the shape probe runs on it).")
        if type(self.teacher_model).__name__ == "TeacherEnsemble":
            raise ValueError("feature_pairs compare one teacher's features: they cannot be used with an ensemble.")
        if self.optimizer is not None:
            raise ValueError(
                "feature_pairs train connectors that the trainer creates, so it must create the optimizer: pass "
                "optimizer_cls_and_kwargs instead of a ready optimizer."
            )
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(args.seed)
            sample = self._feature_sample()
            term = FeatureTerm.build(
                self.model, self.accelerator.unwrap_model(self.teacher_model),
                feature_pairs=args.feature_pairs, loss=args.feature_loss, connector=args.feature_connector,
                student_inputs=sample.student_inputs, teacher_inputs=sample.inputs_for_teacher(),
                margin_batches=self._teacher_input_batches,
            )  # fmt: skip
        if args.precompute_teacher_logits:
            self._check_cacheable(term)
        if term.connectors.has_parameters():
            # DDP (gradients averaged across processes) and mixed precision, like the student.
            term.connectors_forward = self.accelerator.prepare_model(term.connectors)
            self.add_callback(ZeroConnectorGradients(term.connectors))
        carried = TEACHER_LOGITS in (getattr(self.train_dataset, "column_names", None) or [])
        source = "cached with its logits" if args.precompute_teacher_logits and not carried else "live, on every batch"
        logger.info(
            f"Feature term {args.feature_loss} (weight {args.feature_weight}) on {term.describe()}; the teacher's "
            f"features: {source}; {sum(p.numel() for p in term.connectors.parameters())} connector parameters, "
            "trained with the student and not saved with it."
        )
        return term

    def _check_cacheable(self, term: FeatureTerm) -> None:
        """With `precompute_teacher_logits`, the teacher's features are cached with its logits when each is a vector
        per example; maps and token states (`C*H*W` or `L*D` values per example) are refused with their size."""
        refused = term.uncacheable_teacher_features()
        if not refused:
            return
        n, dtype = len(self.train_dataset), self.args.teacher_logits_dtype
        itemsize = getattr(torch, dtype).itemsize
        sizes = {name: n * torch.Size(shape).numel() * itemsize for name, shape in refused.items()}
        listed = ", ".join(f"{name} {refused[name]}: {size / 2**20:.1f} MiB" for name, size in sizes.items())
        raise ValueError(
            f"precompute_teacher_logits=True with feature_pairs: hf_kd caches the teacher's features with its logits "
            f"only when each is a vector per example, but {listed} (per-example shape as probed on the first batch, "
            f"and its size for the {n} training examples in {dtype}; {sum(sizes.values()) / 2**20:.1f} MiB in all) "
            "are not. Set precompute_teacher_logits=False (the teacher then runs on every batch), or pair vector "
            "features (a pooled or penultimate feature)."
        )

    def _cache_teacher_features(self) -> list[str]:
        """The teacher features to compute with the precomputed logits (none without a feature term); from then on
        the feature term reads them from the batches instead of running the teacher."""
        if self._feature_term is None:
            return []
        # The Trainer's kept columns may have been listed (by the shape probe) before these columns existed.
        self._signature_columns = None
        return self._feature_term.use_cached()

    def _feature_sample(self) -> DistillationBatch:
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
        loader = DataLoader(self.train_dataset, batch_size=size, collate_fn=collator)
        for batch in loader:
            yield split_batch(self._prepare_inputs(batch)).inputs_for_teacher()

    def _feature_loss(self, batch: DistillationBatch) -> torch.Tensor:
        """The feature term of the batch whose forwards just ran: with the teacher features the batch carries (cached
        with its logits), else the teacher's own, run here when the batch carried its logits (so it did not run)."""
        term = self._feature_term
        cached = term.cached_teacher_features(batch.teacher_targets)
        if cached is None and not term.has_teacher_features():
            if term.cached_columns and self.model.training and not self._warned_live_features:
                self._warned_live_features = True
                logger.warning(
                    f"A training batch carries no cached teacher features ({sorted(term.cached_columns.values())}): "
                    "the teacher runs for them. Does the data collator drop the teacher_feature_* columns?"
                )
            run_teacher(self.teacher_model, batch.inputs_for_teacher())
        mask = batch.student_inputs.get("attention_mask")
        return term(labels=batch.labels, attention_mask=mask, teacher_features=cached)

    def _collecting_features(self):
        return self._feature_term.collecting() if self._feature_term is not None else nullcontext()

    def training_step(self, model, inputs: dict[str, Any], num_items_in_batch=None) -> torch.Tensor:
        with self._collecting_features():
            return super().training_step(model, inputs, num_items_in_batch)

    def prediction_step(self, model, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys=None):
        with self._collecting_features():
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        term = self._feature_term
        if term is None or not term.connectors.has_parameters():
            return optimizer
        params = [p for p in term.connectors.parameters() if p.requires_grad]
        if {id(p) for group in optimizer.param_groups for p in group["params"]} & {id(p) for p in params}:
            return optimizer  # already there (create_optimizer called twice)
        # Weight decay as the Trainer applies it: on weight matrices and kernels, not on biases or BatchNorm.
        decay, no_decay = [p for p in params if p.dim() >= 2], [p for p in params if p.dim() < 2]
        for group, weight_decay in ((decay, self.args.weight_decay), (no_decay, 0.0)):
            if group:
                optimizer.add_param_group({"params": group, "weight_decay": weight_decay})
        return optimizer

    def _clip_grad_norm(self, model):
        """The student's and the connectors' gradients clipped together, by one norm, as one optimizer's parameters
        (the Trainer's clipping sees the model's alone). DeepSpeed and FSDP clip their own model: left to them."""
        term = self._feature_term
        sharded = self.accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)
        if term is None or not term.connectors.has_parameters() or sharded or self._has_mixed_mesh_grads(model):
            return super()._clip_grad_norm(model)
        parameters = [*model.parameters(), *term.connectors.parameters()]
        return self.accelerator.clip_grad_norm_(parameters, self.args.max_grad_norm)

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        term = self._feature_term
        if term is None or not self.args.should_save or not term.connectors.state_dict():
            return
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        state = {key: value.detach().cpu().contiguous() for key, value in term.connectors.state_dict().items()}
        save_file(state, os.path.join(folder, CONNECTORS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        term = self._feature_term
        if term is None or not term.connectors.state_dict():
            return
        path = os.path.join(resume_from_checkpoint, CONNECTORS_NAME)
        if not os.path.isfile(path):
            raise ValueError(
                f"{resume_from_checkpoint} holds no {CONNECTORS_NAME}: the feature connectors of feature_pairs="
                f"{self.args.feature_pairs} cannot be restored (a checkpoint of a run without them?)."
            )
        device = next(iter(term.connectors.state_dict().values())).device
        try:
            term.connectors.load_state_dict(load_file(path, device=str(device)))
        except RuntimeError as error:
            raise ValueError(
                f"{path} does not fit the connectors of feature_pairs={self.args.feature_pairs}, feature_loss="
                f"{self.args.feature_loss!r} (resume with the settings it was saved with): {error}"
            ) from None
