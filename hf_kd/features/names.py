"""Feature selection for white-box distillation: which tensors of the student and of the teacher a feature term
compares, read by name while the models run, and the connectors that bring a student feature to its teacher's shape.

Feature names (the `feature_pairs` of [`DistillationConfig`], `"student_feature:teacher_feature"`):

- `hidden_states.<i>` / `attentions.<i>`: entry `i` of the model's `hidden_states` / `attentions` output, requested
  with `output_hidden_states=True` / `output_attentions=True` only while features are collected and removed from the
  outputs the Trainer sees. hf_kd's reference models (`MLPForImageClassification`, `CNNForImageClassification`)
  return `hidden_states[0]` = `pixel_values`, then per layer its **pre-ReLU** output (`hidden_states.1`,
  `hidden_states.3`, ...: the Linear/Conv2d outputs) and its block output (`hidden_states.2`, `hidden_states.4`,
  ...: after ReLU, and max-pool or dropout where the block has one). BERT-style models return the embeddings, then
  each layer's output. Attention maps need `attn_implementation="eager"`.
- a module path (`"bert.encoder.layer.3"`, `"convs.1"`, as in `model.named_modules()`): that module's output (the
  first tensor of a tuple), through a forward hook; `"<path>@input"` takes the module's input instead.
- `auto` (alone): pairs chosen by relative depth, see [`auto_pairs`].

Hooks live only while a [`FeatureCollector`] is active (the trainer activates it for one step at a time).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from .table import feature_loss

AUTO = "auto"
OUTPUT_FIELDS = ("hidden_states", "attentions")
INPUT_SUFFIX = "@input"
# hf_kd's reference models: hidden_states[1::2] are pre-ReLU outputs, hidden_states[2::2] block outputs.
REFERENCE_MODEL_TYPES = ("hf_kd_mlp", "hf_kd_cnn")

_NAME = re.compile(r"^(?:(hidden_states|attentions)\.(-?\d+)|([A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*)(@input)?)$")


@dataclass(frozen=True)
class FeatureName:
    """A parsed feature name: an output field entry (`field`, `index`) or a module `path` (its input if `of_input`)."""

    text: str
    field: str | None = None
    index: int | None = None
    path: str | None = None
    of_input: bool = False


def parse_feature(text: str) -> FeatureName:
    """Parse `hidden_states.3`, `attentions.0`, `convs.1` or `convs.1@input` (see the module docstring)."""
    match = _NAME.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"{text!r} is not a feature name: expected 'hidden_states.<i>', 'attentions.<i>', a module path such as "
            f"'bert.encoder.layer.3', or a module path followed by '{INPUT_SUFFIX}'."
        )
    field, index, path, suffix = match.groups()
    if field is not None:
        return FeatureName(text.strip(), field=field, index=int(index))
    return FeatureName(text.strip(), path=path, of_input=suffix is not None)


def parse_feature_pairs(values: Sequence[str]) -> list[tuple[FeatureName, FeatureName]] | str:
    """`["s1:t1", "s2:t2"]` -> parsed pairs, or `"auto"` for `["auto"]`. Raises a `ValueError` naming the argument
    `feature_pairs` and the value at fault."""
    values = [values] if isinstance(values, str) else list(values)
    if AUTO in values:
        if len(values) != 1:
            raise ValueError(f"feature_pairs: 'auto' stands alone (it chooses every pair), got {values}.")
        return AUTO
    if not values:
        raise ValueError("feature_pairs must name at least one 'student_feature:teacher_feature' pair, or 'auto'.")
    pairs = []
    for value in values:
        parts = value.split(":") if isinstance(value, str) else []
        if len(parts) != 2 or not all(part.strip() for part in parts):
            raise ValueError(
                f"feature_pairs: {value!r} is not a 'student_feature:teacher_feature' pair (e.g. "
                "'hidden_states.1:hidden_states.3' or 'convs.0:convs.1')."
            )
        try:
            pairs.append((parse_feature(parts[0]), parse_feature(parts[1])))
        except ValueError as error:
            raise ValueError(f"feature_pairs: in {value!r}, {error}") from None
    return pairs


def _first_tensor(value):
    """A hook's output or input: the tensor itself, or the first tensor of a tuple / `ModelOutput`."""
    if torch.is_tensor(value):
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (tuple, list)) else ()
    return next((item for item in items if torch.is_tensor(item)), None)


def _model_name(model: nn.Module, role: str) -> str:
    return f"the {role} ({type(model).__name__})"


def describe_features(model: nn.Module, field_lengths: dict[str, int], limit: int = 60) -> str:
    """The features a model has, for error messages: its output fields' entries and its module paths."""
    fields = [f"{field}.0 ... {field}.{n - 1}" for field, n in field_lengths.items() if n]
    paths = [name for name, _ in model.named_modules() if name]
    shown = ", ".join(paths[:limit]) + (f", ... ({len(paths) - limit} more)" if len(paths) > limit else "")
    listed = "; ".join(fields) or "no hidden_states/attentions output"
    return f"{listed}; modules (append {INPUT_SUFFIX} for a module's input): {shown or 'none'}"


class FeatureCollector:
    """Collects named features of one model while [`active`](#FeatureCollector.active): forward hooks on the named
    modules, and the output fields (`hidden_states`, `attentions`) requested from the model's forward and then taken
    out of its outputs. `features` maps each name to the tensor of the model's last forward."""

    def __init__(self, model: nn.Module, names: Sequence[FeatureName], role: str, all_fields: Sequence[str] = ()):
        self.model, self.role, self.names = model, role, list(names)
        self.fields = {name.field for name in self.names if name.field} | set(all_fields)
        self.all_fields = set(all_fields)
        self.features: dict[str, torch.Tensor] = {}
        self.field_values: dict[str, tuple] = {}  # whole fields kept for `all_fields` (the shape probe of `auto`)
        self.calls: Counter = Counter()
        self._handles: list = []
        self._strip: set[str] = set()

    def module(self, name: FeatureName) -> nn.Module:
        try:
            return self.model.get_submodule(name.path)
        except AttributeError:
            raise ValueError(
                f"{_model_name(self.model, self.role)} has no feature {name.text!r}: its features are "
                f"{describe_features(self.model, {})}."
            ) from None

    @contextmanager
    def active(self):
        self.features.clear()
        try:
            for name in self.names:
                if name.path is not None:
                    self._hook_module(name)
            if self.fields:
                self._handles.append(self.model.register_forward_pre_hook(self._request_fields, with_kwargs=True))
                self._handles.append(self.model.register_forward_hook(self._take_fields))
            yield self
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()

    def _hook_module(self, name: FeatureName) -> None:
        module = self.module(name)
        if name.of_input:
            hook = module.register_forward_pre_hook(partial(self._store_input, name.text), with_kwargs=True)
        else:
            hook = module.register_forward_hook(partial(self._store_output, name.text))
        self._handles.append(hook)

    def _store(self, key: str, value) -> None:
        tensor = _first_tensor(value)
        if tensor is None:
            raise ValueError(f"{_model_name(self.model, self.role)}: the feature {key!r} holds no tensor.")
        self.features[key] = tensor
        self.calls[key] += 1

    def _store_input(self, key, module, args, kwargs):
        self._store(key, args if args else tuple(kwargs.values()))

    def _store_output(self, key, module, args, output):
        self._store(key, output)

    def _request_fields(self, module, args, kwargs):
        self._strip = set()
        for field in self.fields:
            flag = f"output_{field}"
            if kwargs.get(flag) is None and not getattr(getattr(module, "config", None), flag, False):
                kwargs[flag] = True
                self._strip.add(field)
        return args, kwargs

    def _take_fields(self, module, args, output):
        for field in self.fields:
            values = output.get(field) if isinstance(output, dict) else None
            if field in self.all_fields:
                self.field_values[field] = tuple(values or ())
            for name in self.names:
                if name.field == field:
                    self._store_field(name, values)
        if not self._strip or not isinstance(output, dict):
            return output
        # The Trainer sees the outputs the model would have returned without the request (no extra predictions).
        return type(output)(**{key: value for key, value in output.items() if key not in self._strip})

    def _store_field(self, name: FeatureName, values) -> None:
        if not values or not -len(values) <= name.index < len(values):
            hint = " (attention maps need attn_implementation='eager')" if name.field == "attentions" else ""
            raise ValueError(
                f"{_model_name(self.model, self.role)} has no feature {name.text!r}{hint}: its features are "
                f"{describe_features(self.model, {name.field: len(values or ())})}."
            )
        self._store(name.text, values[name.index])

    def take(self) -> dict[str, torch.Tensor]:
        """The features of the last forward, forgotten here (the next step must produce its own)."""
        features, self.features = self.features, {}
        return features


def relative_depth(position: int, num_student: int, num_teacher: int, with_embeddings: bool) -> int:
    """TinyBERT's uniform layer mapping (Jiao et al., 2020), for any depths: the teacher position at the student's
    relative depth. With embeddings (`hidden_states` of a transformer: embeddings, then layers) student `i` of `0..S`
    maps to teacher `round(i * T / S)` (0 to 0, the last to the last); without (layers only, `0..S-1`) student `i`
    maps to `round((i + 1) * T / S) - 1` (TinyBERT's attention mapping `i*k + k - 1`)."""
    if with_embeddings:
        return round(position * (num_teacher - 1) / max(num_student - 1, 1))
    return max(round((position + 1) * num_teacher / num_student) - 1, 0)


def _layer_names(model: nn.Module, field: str, count: int, loss: str) -> list[str]:
    """The `auto` candidates of one model: the reference models' pre-ReLU outputs (the features feature
    distillation matches, and what the overhaul needs), else every entry (a transformer's embeddings and layers)."""
    if feature_loss(loss).penultimate:
        return [f"{field}.{count - 1}"]
    if (
        field == "hidden_states"
        and getattr(getattr(model, "config", None), "model_type", None) in REFERENCE_MODEL_TYPES
    ):
        return [f"{field}.{i}" for i in range(1, count, 2)]
    return [f"{field}.{i}" for i in range(count)]


def auto_pairs(
    student: nn.Module,
    teacher: nn.Module,
    student_shapes: dict[str, Sequence[tuple[int, ...]]],
    teacher_shapes: dict[str, Sequence[tuple[int, ...]]],
    compatible,
    loss: str,
) -> list[tuple[FeatureName, FeatureName]]:
    """Pairs by relative depth ([`relative_depth`]) over the probed `hidden_states` (`attentions` for
    `attention_mse`), per-example shapes given per field. When the teacher entry at the student's depth cannot be
    matched (`compatible(student_shape, teacher_shape)` is False: e.g. another spatial size), the nearest compatible
    teacher entry is taken (the deeper one on ties); a student entry with none is left out."""
    field = feature_loss(loss).field
    s_shapes, t_shapes = list(student_shapes.get(field, ())), list(teacher_shapes.get(field, ()))
    s_names = _layer_names(student, field, len(s_shapes), loss)
    t_names = _layer_names(teacher, field, len(t_shapes), loss)
    shape_of = {**{("s", n): s_shapes[int(n.split(".")[1])] for n in s_names},
                **{("t", n): t_shapes[int(n.split(".")[1])] for n in t_names}}  # fmt: skip
    with_embeddings = field == "hidden_states" and s_names[:1] == [f"{field}.0"] and t_names[:1] == [f"{field}.0"]
    pairs = []
    for position, s_name in enumerate(s_names):
        target = relative_depth(position, len(s_names), len(t_names), with_embeddings)
        order = sorted(range(len(t_names)), key=lambda j: (abs(j - target), -j))
        match = next((j for j in order if compatible(shape_of["s", s_name], shape_of["t", t_names[j]])), None)
        if match is not None:
            pairs.append((parse_feature(s_name), parse_feature(t_names[match])))
    if not pairs:
        raise ValueError(
            f"feature_pairs='auto' found no {field} pair that feature_loss={loss!r} can compare: student shapes "
            f"{[shape_of['s', n] for n in s_names]}, teacher shapes {[shape_of['t', n] for n in t_names]} (per "
            "example). Name the pairs yourself."
        )
    return pairs
