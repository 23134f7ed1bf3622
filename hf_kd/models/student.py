"""Students derived from their teacher: the teacher's own class and config with fewer layers, initialised from a
subset of its layers plus everything that is not a layer (embeddings, pooler, head), as DistilBERT was."""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence

from torch import nn
from transformers import PreTrainedModel
from transformers.utils import logging

logger = logging.get_logger(__name__)


def _layer_list(model: nn.Module, num_layers: int) -> str:
    """The qualified name of the model's stack of `num_layers` blocks (`bert.encoder.layer`, `distilbert.transformer.layer`...)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return name
    raise ValueError(
        f"Cannot find the stack of {num_layers} layers in {type(model).__name__} (no nn.ModuleList of that length): "
        "pass a student model instead of deriving one."
    )


def spread_layers(num_teacher_layers: int, num_layers: int) -> list[int]:
    """Teacher layers to copy into a `num_layers` student: evenly spread from the first to the last.

    For 12 -> 6 this is DistilBERT's own choice `[0, 2, 4, 7, 9, 11]`, for 6 -> 2 `[0, 5]`; a one-layer student
    takes the first layer, whose input (the embeddings) it keeps.
    """
    if num_layers == 1:
        return [0]
    return [round(i * (num_teacher_layers - 1) / (num_layers - 1)) for i in range(num_layers)]


def derive_student(
    teacher: PreTrainedModel,
    num_layers: int,
    layer_indices: Sequence[int] | None = None,
    init_from_teacher: bool = True,
) -> PreTrainedModel:
    """A student of the teacher's own class and config, with `num_layers` transformer layers.

    With `init_from_teacher` (DistilBERT's recipe), student layer `i` starts as teacher layer `layer_indices[i]`
    (default [`spread_layers`]) and every weight outside the layer stack (embeddings, pooler, classification head) is
    copied; otherwise the student is randomly initialised. The teacher is not modified.
    """
    config = copy.deepcopy(teacher.config)
    teacher_layers = config.num_hidden_layers  # `attribute_map` resolves this for n_layers / num_layers configs
    if not isinstance(num_layers, int) or not 1 <= num_layers <= teacher_layers:
        raise ValueError(
            f"num_layers must be an int in [1, {teacher_layers}] (the teacher's layers), got {num_layers!r}."
        )
    if layer_indices is None:
        layer_indices = spread_layers(teacher_layers, num_layers)
    layer_indices = [int(i) for i in layer_indices]
    if len(layer_indices) != num_layers or any(not 0 <= i < teacher_layers for i in layer_indices):
        raise ValueError(
            f"layer_indices must give {num_layers} teacher layers in [0, {teacher_layers - 1}], got {layer_indices}."
        )
    config.num_hidden_layers = num_layers
    config.architectures = [type(teacher).__name__]
    student = type(teacher)(config)
    if not init_from_teacher:
        return student.to(teacher.dtype)

    prefix = _layer_list(teacher, teacher_layers) + "."
    layer_key = re.compile(re.escape(prefix) + r"(\d+)\.(.*)")
    source = teacher.state_dict()
    state = {}
    for key in student.state_dict():
        match = layer_key.fullmatch(key)
        source_key = f"{prefix}{layer_indices[int(match.group(1))]}.{match.group(2)}" if match else key
        state[key] = source[source_key].detach().clone()
    student.load_state_dict(state, strict=True)
    student.to(teacher.dtype)
    logger.info(f"Derived a {num_layers}-layer student from teacher layers {layer_indices}.")
    return student
