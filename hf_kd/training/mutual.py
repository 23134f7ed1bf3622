"""Deep mutual learning (Zhang et al., CVPR 2018): K peers trained together, each taught by the others.

[`MutualLearningTrainer`] is a sibling of [`DistillationTrainer`]: there is no frozen teacher, every peer is trained.
The peers are held by one `nn.Module` ([`PeerModels`]), so the Trainer sees a single model: one optimizer over all
peers, one Accelerate wrapping (DDP, mixed precision), one checkpoint (each peer in `peer_<k>/`) and one resume.
The objective is [`hf_kd.losses.mutual_learning_loss`].
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from accelerate.utils import DistributedType, extract_model_from_parallel
from torch import nn
from transformers.trainer_utils import EvalPrediction

from ..batch import TEACHER_LOGITS
from ..losses.logit import mutual_learning_loss
from ..teacher.loading import check_compatible, logits_of
from .base import HfKdTrainer
from .configuration_distillation import DistillationConfig

PEER_DIR = "peer_{}"


@dataclass
class MutualLearningConfig(DistillationConfig):
    r"""
    Configuration for [`MutualLearningTrainer`]: every [`DistillationConfig`] field (the trainer reads
    `temperature` and `loss_type`), plus the weight of the peers' term. Each peer k minimises
    `CE(y, p_k) + kl_weight * 1/(K-1) * sum_{l != k} T**2 * KL(p_l || p_k)`.

    A subclass of [`DistillationConfig`] rather than new fields in it: the examples parse one `DistillationConfig`
    per run and hand it on with [`from_config`]; the field below means nothing to a frozen teacher. `alpha` is not
    used (the two terms are weighted 1 and `kl_weight`, as in the paper), and there is no teacher to load or
    precompute: the peers change at every step.

    Parameters:
        kl_weight (`float`, *optional*, defaults to `1.0`):
            Weight of the mean soft term over the other peers (the paper: 1). `0` is K independent CE trainings.
    """

    kl_weight: float = field(
        default=1.0,
        metadata={
            "help": "Mutual learning: weight of each peer's mean KL term towards the other peers (Zhang et al.: 1; "
            "0 trains the peers independently on the labels)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.kl_weight, (int, float)) or self.kl_weight < 0:
            raise ValueError(f"kl_weight must be a number >= 0, got {self.kl_weight!r}.")
        if self.precompute_teacher_logits:
            raise ValueError(
                "precompute_teacher_logits=True does not apply to mutual learning: the peers teach each other and "
                "change at every step, so logits computed once would be stale. Set it to False."
            )
        if self.teacher_model_name_or_path:
            raise ValueError(
                "teacher_model_name_or_path does not apply to mutual learning: every peer is trained. Pass the "
                "peers (a pretrained one may be among them) to MutualLearningTrainer(models=[...])."
            )

    @classmethod
    def from_config(cls, config: DistillationConfig, **changes) -> MutualLearningConfig:
        """The same run's settings as a `MutualLearningConfig` (with `changes` applied)."""
        values = {f.name: getattr(config, f.name) for f in fields(config) if f.init}
        return cls(**{**values, **changes})


class PeerModels(nn.Module):
    """The peers as one module: `forward` runs each on the same inputs and returns their outputs, in order."""

    def __init__(self, peers: Sequence[nn.Module]):
        super().__init__()
        self.peers = nn.ModuleList(peers)
        self.main_input_name = getattr(peers[0], "main_input_name", "input_ids")

    def forward(self, **inputs) -> tuple:
        return tuple(peer(**inputs) for peer in self.peers)

    def save_pretrained(self, save_directory: str | os.PathLike, state_dict: dict | None = None, **kwargs) -> None:
        """Each peer to `save_directory/peer_<k>` with its own `save_pretrained` (a whole-container `state_dict`,
        e.g. DeepSpeed's or FSDP's, is split by the `peers.<k>.` prefixes)."""
        for k, peer in enumerate(self.peers):
            prefix = f"peers.{k}."
            peer_state = None if state_dict is None else {
                name[len(prefix):]: tensor for name, tensor in state_dict.items() if name.startswith(prefix)
            }  # fmt: skip
            peer.save_pretrained(os.path.join(save_directory, PEER_DIR.format(k)), state_dict=peer_state, **kwargs)


def _check_peers(peers: Sequence[nn.Module]) -> None:
    if len(peers) < 2:
        raise ValueError(f"MutualLearningTrainer needs at least 2 peers, got {len(peers)}.")
    if len({id(peer) for peer in peers}) != len(peers):
        raise ValueError("The same model object appears twice among the peers: pass K distinct models.")
    for peer in peers[1:]:
        check_compatible(peers[0], peer)  # the same classes, in the same order


def per_peer_metrics(compute_metrics: Callable[[EvalPrediction], dict], num_peers: int) -> Callable:
    """`compute_metrics` over `(N, K, C)` predictions: the user's function once per peer, keys suffixed `_<k>`."""

    def compute(prediction: EvalPrediction) -> dict:
        scores = {}
        for k in range(num_peers):
            peer = EvalPrediction(predictions=prediction.predictions[:, k], label_ids=prediction.label_ids)
            scores.update({f"{name}_{k}": value for name, value in compute_metrics(peer).items()})
        return scores

    return compute


class MutualLearningTrainer(HfKdTrainer):
    """A [`~transformers.Trainer`] that trains K peers together by deep mutual learning.

    Each peer's loss is `CE(y, p_k) + kl_weight * 1/(K-1) * sum_{l != k} T**2 * KL(p_l || p_k)`, the other peers'
    outputs taken as constants ([`hf_kd.losses.mutual_learning_loss`]); the trained total is the sum over peers. The
    peers share one optimizer (Adam's updates are per parameter, so this is one optimizer per peer), and gradients
    are clipped to `max_grad_norm` per peer, as K separate trainings would. All peers read the same inputs.

    Args:
        models (sequence of [`~transformers.PreTrainedModel`], or [`PeerModels`]): the peers, same or different
            architectures over the same classes.
        args ([`MutualLearningConfig`]): training settings, `temperature`, `loss_type` and `kl_weight`.
        compute_metrics: the usual function of one model's predictions; it is called once per peer and its metrics
            are logged with the peer's index (`eval_accuracy_0`, `eval_accuracy_1`, ...).

    The other arguments are those of [`~transformers.Trainer`]. Logged: every peer's terms (`loss_ce_<k>`,
    `loss_kl_<k>`). `save_model` (and every checkpoint) writes each peer to `peer_<k>/` as a complete
    `from_pretrained` model with the processor and a model card; resuming loads them back from there.
    """

    _tag_names: ClassVar[list[str]] = ["hf_kd", "knowledge-distillation", "mutual-learning"]

    def __init__(
        self,
        models: Sequence[nn.Module] | PeerModels,
        args: MutualLearningConfig | None = None,
        data_collator: Callable | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        compute_metrics: Callable[[EvalPrediction], dict] | None = None,
        **kwargs,
    ):
        args = args if args is not None else MutualLearningConfig(output_dir="tmp_trainer")
        if not isinstance(args, MutualLearningConfig):
            raise TypeError(f"args must be a MutualLearningConfig (it carries kl_weight), got {type(args).__name__}.")
        model = models if isinstance(models, PeerModels) else PeerModels(list(models))
        _check_peers(list(model.peers))
        if compute_metrics is not None:
            compute_metrics = per_peer_metrics(compute_metrics, len(model.peers))
        super().__init__(
            model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
            eval_dataset=eval_dataset, processing_class=processing_class, compute_metrics=compute_metrics, **kwargs,
        )  # fmt: skip
        if args.label_names is None:  # read off the model's forward by default: the container's takes **inputs
            self.label_names = ["labels"]

    @property
    def peers(self) -> list[nn.Module]:
        """The peers, unwrapped from DDP / compilation."""
        return list(extract_model_from_parallel(self.model).peers)

    def _set_signature_columns_if_needed(self):
        # The container's forward takes **inputs: keep the columns any peer's forward takes, and the labels.
        if self._signature_columns is None:
            names = {name for peer in self.peers for name in inspect.signature(peer.forward).parameters}
            self._signature_columns = sorted(names - {"kwargs", "args"}) + ["label", "label_ids", "labels"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args: MutualLearningConfig = self.args
        if TEACHER_LOGITS in inputs:
            raise ValueError("The batch carries teacher_logits: mutual learning has no fixed teacher; drop the column.")
        if "labels" not in inputs:
            raise ValueError(f"Mutual learning needs 'labels' in the batch; its keys are {sorted(inputs)}.")
        labels = inputs["labels"]
        outputs = model(**{key: value for key, value in inputs.items() if key != "labels"})
        logits = [logits_of(output) for output in outputs]
        terms = mutual_learning_loss(logits, labels, args.temperature, args.kl_weight, args.loss_type)
        loss = self.record_loss_terms(terms, training=model.training)
        # Predictions as (N, K, C): `per_peer_metrics` scores each peer's slice.
        return (loss, {"logits": torch.stack(logits, dim=1)}) if return_outputs else loss

    def _clip_grad_norm(self, model):
        """Clip each peer's gradients to `max_grad_norm` on its own (one global norm would couple the peers).
        Returns the norm over all peers' gradients, before clipping, as the Trainer logs it."""
        if self.accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
            return super()._clip_grad_norm(model)  # their engines clip the whole model: one global norm
        self.accelerator.unscale_gradients()  # once for the optimizer (fp16); a second call would raise
        norms = [
            torch.nn.utils.clip_grad_norm_(
                [p for p in peer.parameters() if p.grad is not None], self.args.max_grad_norm
            )
            for peer in self.peers
        ]
        return torch.stack(norms).norm()

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Each peer to `output_dir/peer_<k>` ([`PeerModels.save_pretrained`]), with the processor and its card."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        extract_model_from_parallel(self.model).save_pretrained(output_dir, state_dict=state_dict)
        for k in range(len(self.peers)):
            path = os.path.join(output_dir, PEER_DIR.format(k))
            if self.processing_class is not None:
                self.processing_class.save_pretrained(path)
        self._write_peer_cards(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def create_model_card(self, model_name: str | None = None, report: Any = None, **kwargs) -> None:
        """Write each peer's card into `args.output_dir/peer_<k>/README.md` through hf_kd's one card path
        ([`hf_kd.report.modelcard.create_model_card`]), with the results of `report` when given."""
        self._write_peer_cards(self.args.output_dir, report=report, **kwargs)

    def _write_peer_cards(self, output_dir: str, **card_kwargs) -> None:
        from ..report.modelcard import create_model_card

        peers = self.peers
        for k, peer in enumerate(peers):
            others = ", ".join(f"peer {j} ({type(p).__name__})" for j, p in enumerate(peers) if j != k)
            create_model_card(
                self, student=peer, output_dir=os.path.join(output_dir, PEER_DIR.format(k)),
                model_name=PEER_DIR.format(k), teacher_name=f"{others}, by deep mutual learning", **card_kwargs,
            )  # fmt: skip

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        # Each peer from its own directory, through the Trainer's own loader (safetensors, shards, warnings).
        container = extract_model_from_parallel(model if model is not None else self.model)
        for k, peer in enumerate(container.peers):
            super()._load_from_checkpoint(os.path.join(resume_from_checkpoint, PEER_DIR.format(k)), model=peer)

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)
