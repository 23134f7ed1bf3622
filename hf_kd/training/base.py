"""`HfKdTrainer`: what every hf_kd trainer shares, written once.

- the default collator (the Trainer's, plus the pass-through of batches an `InMemoryDataset` built whole);
- loss terms: each unweighted term of a step recorded, averaged over the logging window and logged as `loss_<name>`,
  and a diverged run stopped at the first logging step whose terms are not finite;
- trainable modules beside the model (feature connectors, a generator): in the optimizer, clipped with the model,
  their gradients cleared after each step, saved in every `checkpoint-*` and restored on resume (the Trainer's resume
  loads the model alone, with `strict=False`);
- saving as the model's own class under FSDP2, and the one card path (`hf_kd.report.modelcard`) for
  `create_model_card` and `push_to_hub`.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    DataCollatorWithPadding,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    default_data_collator,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..data import collate_batches
from ..placement import saved_as_own_class


def default_collator(processing_class: Any) -> Callable:
    """The Trainer's own default (padding for a tokenizer), plus the pass-through of prebuilt batches."""
    padding = isinstance(processing_class, PreTrainedTokenizerBase)
    return partial(
        collate_batches, fallback=DataCollatorWithPadding(processing_class) if padding else default_data_collator
    )


class _ZeroGradients(TrainerCallback):
    """Clears the extra modules' gradients after each optimizer step, as the Trainer's `model.zero_grad()` does for
    the model (it does not reach modules outside it): without it they would add up over the run."""

    def __init__(self, module: nn.Module):
        self.module = module

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.module.zero_grad()


class HfKdTrainer(Trainer):
    """The base of hf_kd's trainers (see the module docstring). A subclass computes its loss terms as a dict (with
    `"loss"`, the weighted total), passes them to `record_loss_terms`, and registers any module it trains beside the
    model with `add_trainable_module` before the optimizer is created."""

    _tag_names = ["hf_kd", "knowledge-distillation"]
    # `compute_loss` returns a batch mean: the Trainer must divide it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, model=None, args=None, data_collator=None, processing_class=None, **kwargs):
        data_collator = data_collator if data_collator is not None else default_collator(processing_class)
        super().__init__(
            model=model, args=args, data_collator=data_collator, processing_class=processing_class, **kwargs
        )
        # The loss never goes through the model's own loss, so its loss kwargs do not matter; this also skips the
        # Trainer's per-step label counting for `num_items_in_batch`.
        self.model_accepts_loss_kwargs = False
        self._metrics: dict[str, dict[str, list[torch.Tensor]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self._trainable_modules: dict[str, nn.Module] = {}

    # Loss terms -------------------------------------------------------------------------------------------------------

    def record_loss_terms(self, terms: dict[str, torch.Tensor], training: bool) -> torch.Tensor:
        """Keep each unweighted term of the step (logged as `loss_<name>`); return the weighted total."""
        loss = terms.pop("loss")
        window = self._metrics["train" if training else "eval"]
        for name, value in terms.items():
            window[f"loss_{name}"].append(value.detach())
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The loss terms since the last log, each averaged over those steps, then over processes, like the Trainer's
        own `loss`; in evaluation with the prefix of its `*_loss` key (`eval_`, or `test_`)."""
        mode = "train" if self.model.training else "eval"
        window = {
            key: self.accelerator.reduce(torch.stack(values).mean(), reduction="mean").item()
            for key, values in self._metrics[mode].items()
            if values
        }
        prefix = next((key[: -len("loss")] for key in logs if key.endswith("_loss")), "eval_") if mode == "eval" else ""
        logs.update({f"{prefix}{key}": value for key, value in window.items()})
        if mode == "train":
            self._check_finite_loss({**window, **({"loss": logs["loss"]} if "loss" in logs else {})})
        super().log(logs, start_time)
        self._metrics[mode].clear()

    def _check_finite_loss(self, window: dict[str, float]) -> None:
        """Stop a diverged run at the logging step where its loss stops being finite, before anything is saved,
        measured or reported. Checked on values `log` already fetched: no extra device sync per step."""
        if all(math.isfinite(value) for value in window.values()):
            return
        terms = ", ".join(f"{key} {value}" for key, value in window.items())
        raise FloatingPointError(
            f"{type(self).__name__}: non-finite training loss at step {self.state.global_step} ({terms}, averaged "
            "since the previous log). The run is stopped: its model would be NaN. Lower the learning rate, check "
            "temperature and alpha, the inputs (NaN pixels or features), and fp16 overflow (use bf16 or fp32)."
        )

    def predict(self, *args, **kwargs):
        # `predict` does not log: drop the loss terms it recorded so they do not leak into the next evaluation.
        output = super().predict(*args, **kwargs)
        self._metrics["eval"].clear()
        return output

    # Trainable modules beside the model --------------------------------------------------------------------------------

    def add_trainable_module(self, name: str, module: nn.Module) -> nn.Module:
        """Train `module` with the model: in the optimizer (weight decay as the Trainer applies it), gradients
        clipped with the model's by one norm, cleared after each step, saved in each checkpoint as
        `<name>.safetensors` and restored on resume; never saved with the model. Returns what the loss should call:
        the module wrapped by Accelerate (DDP, mixed precision) like the model. Call it before the optimizer exists."""
        if self.optimizer is not None:
            raise ValueError(
                f"{name} is trained with the model, so the trainer must create the optimizer: pass "
                "optimizer_cls_and_kwargs instead of a ready optimizer."
            )
        self._trainable_modules[name] = module
        self.add_callback(_ZeroGradients(module))
        return self.accelerator.prepare_model(module)

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        known = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for module in self._trainable_modules.values():
            params = [p for p in module.parameters() if p.requires_grad and id(p) not in known]
            decay, no_decay = [p for p in params if p.dim() >= 2], [p for p in params if p.dim() < 2]
            for group, weight_decay in ((decay, self.args.weight_decay), (no_decay, 0.0)):
                if group:
                    optimizer.add_param_group({"params": group, "weight_decay": weight_decay})
        return optimizer

    def _clip_grad_norm(self, model):
        """The model's and the extra modules' gradients clipped together, as one optimizer's parameters (the Trainer's
        clipping sees the model's alone). DeepSpeed and FSDP clip their own model: left to them."""
        extra = [p for module in self._trainable_modules.values() for p in module.parameters() if p.requires_grad]
        sharded = self.accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)
        if not extra or sharded or self._has_mixed_mesh_grads(model):
            return super()._clip_grad_norm(model)
        return self.accelerator.clip_grad_norm_([*model.parameters(), *extra], self.args.max_grad_norm)

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if not self.args.should_save:
            return
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        for name, module in self._trainable_modules.items():
            state = {key: value.detach().cpu().contiguous() for key, value in module.state_dict().items()}
            if state:
                save_file(state, os.path.join(folder, f"{name}.safetensors"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        for name, module in self._trainable_modules.items():
            if not module.state_dict():
                continue
            path = os.path.join(resume_from_checkpoint, f"{name}.safetensors")
            if not os.path.isfile(path):
                raise ValueError(
                    f"{resume_from_checkpoint} holds no {name}.safetensors: the {name} of this run cannot be restored "
                    "(a checkpoint of a run with other settings?)."
                )
            device = next(iter(module.state_dict().values())).device
            try:
                module.load_state_dict(load_file(path, device=str(device)))
            except RuntimeError as error:
                raise ValueError(
                    f"{path} does not fit this run's {name} (resume with the settings it was saved with): {error}"
                ) from None

    # Saving and publishing ---------------------------------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # Under FSDP2 the model is saved as its own class, not torch's generated `FSDP<Name>`: its config's auto_map
        # must point at its own modeling file.
        with saved_as_own_class(self.model):
            super()._save(output_dir, state_dict)

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True, token: str | None = None, revision: str | None = None, private: bool | None = None, **kwargs):  # fmt: skip
        """[`~transformers.Trainer.push_to_hub`] (save the model, write its card, upload the output directory). If no
        token is found, or the Hub cannot be reached or refuses the push, the model and its card are saved locally
        and a [`hf_kd.report.hub.HubPushError`] says what failed. `kwargs` go to the card (e.g. `report=`)."""
        from ..report.hub import hub_push_errors

        with hub_push_errors(self, token=token, card_kwargs=kwargs):
            return super().push_to_hub(
                commit_message=commit_message, blocking=blocking, token=token, revision=revision, private=private,
                **kwargs,
            )  # fmt: skip

    def create_model_card(self, model_name: str | None = None, report: Any = None, **kwargs) -> None:
        """Write the distillation model card to `args.output_dir/README.md` (see [`hf_kd.report.modelcard`]).

        `report` is a [`~hf_kd.report.report.DistillationReport`] (or its JSON path, directory or dict) whose results
        table, notes and plot go into the card; default: `distillation_report.json` in the output directory.
        `kwargs` go to [`hf_kd.report.modelcard.create_model_card`] (`license`, `tags`, `dataset`, `eval_split`,
        `repo_id`, ...). `license` defaults to Apache-2.0."""
        from ..report.modelcard import create_model_card

        create_model_card(self, model_name=model_name, report=report, **kwargs)
