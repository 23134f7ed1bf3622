"""Activation statistics of a teacher (Lopes, Fenu & Starner, 2017): metadata shipped beside a trained teacher so that
a student can later be distilled from it without its training data.

[`record_activation_statistics`] runs the teacher once over data it was trained on and keeps, per layer and per
class, the mean and variance of each unit's activation ([`ActivationStatistics`]). `save_pretrained(teacher_dir)`
writes them as one small safetensors file beside the teacher's weights, so they travel with it (`push_to_hub` of
the directory uploads them too); [`ActivationStatistics.from_pretrained`] reads them back from the directory, a Hub
id, or a teacher loaded with `from_pretrained`. The `statistics` method of [`DataFreeDistillationTrainer`]
reconstructs inputs whose activations match them.

The layers are the teacher's `hidden_states` (all but the input) and its logits, named as hf_kd's feature names
(`hidden_states.<i>`, `logits`); a feature map `(B, C, H, W)` is reduced to its per-channel spatial mean.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..batch import LABELS
from ..data import collate_batches
from .loading import cast_floating_inputs, logits_of

STATISTICS_FILE = "activation_statistics.safetensors"
_FORMAT = "hf_kd-activation-statistics-1"


def _vectors(activation: torch.Tensor) -> torch.Tensor:
    """`(B, D)` per example: a feature map `(B, C, H, W)` (or `(B, C, L)`) becomes its per-channel spatial mean."""
    return activation.flatten(start_dim=2).mean(dim=2) if activation.dim() > 2 else activation


def teacher_activations(teacher: nn.Module, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
    """The teacher's activations on `pixel_values`, by layer name, each `(B, D)` (gradients flow to the inputs)."""
    name = getattr(teacher, "main_input_name", "pixel_values")
    outputs = teacher(**cast_floating_inputs({name: pixel_values}, teacher), output_hidden_states=True)
    hidden_states = outputs.get("hidden_states") if isinstance(outputs, dict) else None
    if not hidden_states:
        raise ValueError(
            f"{type(teacher).__name__} returned no hidden_states with output_hidden_states=True: activation "
            "statistics need a teacher that returns them (transformers' models do)."
        )
    layers = {f"hidden_states.{i}": _vectors(h) for i, h in enumerate(hidden_states) if i > 0}
    layers["logits"] = logits_of(outputs)
    return layers


@dataclass
class ActivationStatistics:
    """Per-layer, per-class means and variances of a teacher's activations.

    Args:
        means, variances (`dict[str, torch.Tensor]`): By layer name, `(num_classes, units)` each. A class never seen
            has mean 0 and variance 0 (and count 0).
        class_counts (`torch.Tensor`): Examples recorded per class, `(num_classes,)`.
    """

    means: dict[str, torch.Tensor]
    variances: dict[str, torch.Tensor]
    class_counts: torch.Tensor

    @property
    def layers(self) -> list[str]:
        return list(self.means)

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write `activation_statistics.safetensors` into `save_directory` (the teacher's own directory)."""
        tensors = {"class_counts": self.class_counts.contiguous()}
        for layer in self.layers:
            tensors[f"{layer}.mean"] = self.means[layer].float().contiguous()
            tensors[f"{layer}.var"] = self.variances[layer].float().contiguous()
        path = Path(save_directory) / STATISTICS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={"format": _FORMAT, "layers": json.dumps(self.layers)})
        return path

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike | nn.Module, **hub_kwargs) -> ActivationStatistics:
        """Read them from a teacher directory, a Hub model id, or a teacher loaded with `from_pretrained` (read from
        where it was loaded, `name_or_path`). Raises `FileNotFoundError` saying how to record them."""
        where = getattr(source, "name_or_path", None) if isinstance(source, nn.Module) else str(source)
        path = _find_file(where, hub_kwargs) if where else None
        if path is None:
            raise FileNotFoundError(
                f"No {STATISTICS_FILE} beside the teacher ({where or 'a model not loaded from a directory'}): the "
                "statistics method needs activation statistics recorded once, by whoever holds the teacher's "
                "training data: `from hf_kd.teacher.statistics import record_activation_statistics; "
                "record_activation_statistics(teacher, train_dataset).save_pretrained(teacher_dir)`."
            )
        return cls.load(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ActivationStatistics:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("format") != _FORMAT:
            raise ValueError(f"{path} is not an hf_kd activation statistics file (format {metadata.get('format')!r}).")
        tensors = load_file(str(path))
        layers = json.loads(metadata["layers"])
        return cls(
            means={layer: tensors[f"{layer}.mean"] for layer in layers},
            variances={layer: tensors[f"{layer}.var"] for layer in layers},
            class_counts=tensors["class_counts"],
        )


def _find_file(where: str, hub_kwargs: dict) -> str | None:
    if os.path.isdir(where):
        path = os.path.join(where, STATISTICS_FILE)
        return path if os.path.isfile(path) else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        RepositoryNotFoundError,
    )

    try:
        return hf_hub_download(where, STATISTICS_FILE, **hub_kwargs)
    except (EntryNotFoundError, RepositoryNotFoundError, HFValidationError, OSError):
        return None


@torch.no_grad()
def record_activation_statistics(
    teacher: nn.Module, dataset, batch_size: int = 512, data_collator=None, num_classes: int | None = None
) -> ActivationStatistics:  # fmt: skip
    """Run `teacher` over `dataset` (rows or [`InMemoryDataset`] batches with the teacher's input and, ideally,
    `labels`) and return the per-layer, per-class means and variances of its activations. Examples are grouped by
    their label (Lopes et al.'s per-class records), or by the teacher's prediction when the data has no labels."""
    was_training = teacher.training
    teacher.eval()
    num_classes = num_classes or teacher.config.num_labels
    name = getattr(teacher, "main_input_name", "pixel_values")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=data_collator or collate_batches)
    device = next(teacher.parameters()).device
    sums, squares, counts = {}, {}, torch.zeros(num_classes, dtype=torch.float64)
    for batch in loader:
        layers = teacher_activations(teacher, batch[name].to(device))
        labels = batch[LABELS].to(device) if LABELS in batch else layers["logits"].argmax(dim=-1)
        one_hot = nn.functional.one_hot(labels.long(), num_classes).double()  # (B, C): per-class sums as a matmul
        counts += one_hot.sum(dim=0).cpu()
        for layer, values in layers.items():
            values = values.double()
            sums[layer] = sums.get(layer, 0) + (one_hot.T @ values).cpu()
            squares[layer] = squares.get(layer, 0) + (one_hot.T @ values**2).cpu()
    teacher.train(was_training)
    if not sums:
        raise ValueError("record_activation_statistics got an empty dataset.")
    denominator = counts.clamp_min(1).unsqueeze(1)
    means = {layer: sums[layer] / denominator for layer in sums}
    variances = {layer: (squares[layer] / denominator - means[layer] ** 2).clamp_min(0) for layer in sums}
    return ActivationStatistics(
        means={k: v.float() for k, v in means.items()},
        variances={k: v.float() for k, v in variances.items()},
        class_counts=counts.long(),
    )
