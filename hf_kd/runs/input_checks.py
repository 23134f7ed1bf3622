"""Checks of the examples' inputs that need more than the argument itself, each failing before anything is trained
with a message that names the argument as the user typed it and what it accepts:

- [`check_model_source`]: a trained model to load (`--teacher_model_name_or_path`, `--student_model_name_or_path`)
  is a local directory or a Hub id; a path that does not exist is said to be one, not sent to the Hub as a repo id
  (`from_pretrained` would answer "Repo id must be in the form ...").
- [`check_architecture`]: a model to build (`--teacher`, `--student`, `--assistants`, `--peers`) is a preset, a
  directory holding a config, or a Hub id `namespace/name`; anything else lists the presets.
- [`check_feature_outputs`]: the output fields `--feature_pairs` names (`hidden_states.<i>`, `attentions.<i>`) are
  ones the models return (an MLP's forward has no `output_attentions`: a `TypeError` at the first step otherwise).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from torch import nn

from ..features.names import AUTO, parse_feature_pairs
from ..models import PRESET_NAMES

# The forward argument that asks a transformers model for each output field.
_FIELD_ARGUMENTS = {"hidden_states": "output_hidden_states", "attentions": "output_attentions"}
_FIELD_WORDS = {"hidden_states": "hidden states", "attentions": "attention maps"}


def _is_hub_id(value: str) -> bool:
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


def check_model_source(value: str, argument: str) -> None:
    """`value` names a model to load: an existing directory, or a Hub id (`name` or `namespace/name`)."""
    if os.path.isdir(value):
        return
    if os.path.exists(value):
        raise ValueError(f"{argument} {value!r} is a file; give the directory a model was saved to (save_pretrained).")
    if not _is_hub_id(value) or value.startswith((".", "~")):
        raise ValueError(
            f"{argument} {value!r}: the directory {os.path.abspath(os.path.expanduser(value))} does not exist, and "
            "it is not a Hub id either ('name' or 'namespace/name'), so it is neither a local model nor one on the "
            "Hub. Check the path (a model saved with save_pretrained, e.g. a previous run's <output_dir>/teacher)."
        )


def check_architecture(value: str, argument: str) -> None:
    """`value` names an architecture to build: a preset, a directory holding a config, or a Hub id with a namespace
    (whose config is downloaded). A bare name that is no preset is refused, listing the presets."""
    if value in PRESET_NAMES or os.path.isdir(value) or ("/" in value and _is_hub_id(value)):
        return
    raise ValueError(
        f"{argument} {value!r} is not a preset ({', '.join(PRESET_NAMES)}), nor an existing directory holding a "
        "model config (config.json, e.g. written by save_pretrained); a Hub model id 'namespace/name' is accepted "
        "too."
    )


def _returns(model: nn.Module, field: str) -> bool:
    """Whether `model`'s forward can be asked for `field` (it takes `output_<field>` or any keyword)."""
    parameters = inspect.signature(model.forward).parameters
    return _FIELD_ARGUMENTS[field] in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _fields_of(model: nn.Module) -> str:
    fields = [f"{field}.<i>" for field in _FIELD_ARGUMENTS if _returns(model, field)]
    modules = [name for name, _ in model.named_modules() if name]
    shown = ", ".join(modules[:20]) + (f", ... ({len(modules) - 20} more)" if len(modules) > 20 else "")
    return f"{' and '.join(fields) or 'no hidden_states/attentions output'}; module outputs: {shown or 'none'}"


def check_feature_outputs(feature_pairs, students: Sequence[nn.Module], teachers: Sequence[nn.Module]) -> None:
    """Every output field `feature_pairs` names on the student side is one each of `students` returns, and likewise
    for `teachers` (module paths are checked by the trainer, which lists the modules)."""
    if not feature_pairs:
        return
    pairs = parse_feature_pairs(feature_pairs)
    if pairs == AUTO:
        return
    for side, models, index in (("student", students, 0), ("teacher", teachers, 1)):
        for model in models:
            for pair in pairs:
                name = pair[index]
                if name.field is None or _returns(model, name.field):
                    continue
                raise ValueError(
                    f"--feature_pairs {pair[0].text}:{pair[1].text}: the {side} ({type(model).__name__}) returns no "
                    f"{_FIELD_WORDS[name.field]} (its forward takes no {_FIELD_ARGUMENTS[name.field]}), so it has no "
                    f"{name.text!r}. Its features: {_fields_of(model)}. Pick a feature it has, and a --feature_loss "
                    "that compares such features."
                )
