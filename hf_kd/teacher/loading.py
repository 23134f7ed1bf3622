"""The frozen teacher: loading, compatibility with the student, running it, and checking given logits."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import transformers
from accelerate.utils import extract_model_from_parallel
from torch import nn
from transformers.utils import logging

from .. import batch as batch_convention
from ..data import generic_labels
from ..placement import whole_model_loading

logger = logging.get_logger(__name__)


def logits_of(outputs) -> torch.Tensor:
    """The logits of a model's outputs: a `ModelOutput` (or dict) with `logits`, or a tuple with them first."""
    return outputs["logits"] if isinstance(outputs, dict) else outputs[0]


def auto_class_for(model: nn.Module):
    """The `AutoModelFor*` class of `model`'s task, read off its class name (`BertForSequenceClassification` ->
    `AutoModelForSequenceClassification`), as transformers names every task head."""
    name = type(model).__name__
    if "For" in name:
        auto_name = "AutoModel" + name[name.index("For") :]
        auto_cls = getattr(transformers, auto_name, None)
        if auto_cls is not None:
            return auto_cls
    raise ValueError(
        f"Cannot tell which Auto class loads a teacher for a student of class {name}: pass the teacher as a model "
        "instance (teacher_model=...) instead of a name or path."
    )


def resolve_init_kwargs(init_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """`from_pretrained` kwargs as given on the command line: a `"dtype": "bfloat16"` string becomes a torch dtype."""
    kwargs = dict(init_kwargs or {})
    for key in ("dtype", "torch_dtype"):
        value = kwargs.get(key)
        if isinstance(value, str) and value != "auto":
            dtype = getattr(torch, value, None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"teacher_model_init_kwargs[{key!r}] must name a torch dtype, got {value!r}.")
            kwargs[key] = dtype
    return kwargs


def load_teacher(
    name_or_path: str, student: nn.Module, init_kwargs: dict[str, Any] | None = None, whole: bool = False
) -> transformers.PreTrainedModel:
    """Load a teacher with the Auto class matching the student's task (local directory or Hub id); `whole`: never
    partitioned at load time by a ZeRO-3 run's `zero.Init` (see `whole_model_loading`)."""
    auto_cls = auto_class_for(student)
    kwargs = resolve_init_kwargs(init_kwargs)
    config_kwargs = {k: v for k, v in kwargs.items() if k in ("revision", "trust_remote_code", "token", "cache_dir")}
    config = transformers.AutoConfig.from_pretrained(name_or_path, **config_kwargs)
    remote = auto_cls.__name__ in (getattr(config, "auto_map", None) or {})
    if not remote and type(config) not in auto_cls._model_mapping:  # e.g. a BERT text classifier, an image student
        raise ValueError(
            f"The teacher {name_or_path} (model_type {config.model_type!r}) and the student "
            f"({type(student).__name__}) take different inputs: the student reads "
            f"{getattr(student, 'main_input_name', '?')!r} and {config.model_type!r} has no {auto_cls.__name__} "
            "head. Give a teacher trained for the student's task and modality."
        )
    logger.info(f"Loading the teacher {name_or_path} with {auto_cls.__name__}")
    with whole_model_loading() if whole else nullcontext():
        return auto_cls.from_pretrained(name_or_path, **kwargs)


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


def _vocabulary_sizes(model: nn.Module) -> set[int]:
    """The sizes of the token vocabulary a model reads: `config.vocab_size` and its input embedding's rows."""
    sizes = set()
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(vocab_size, int):
        sizes.add(vocab_size)
    try:
        embeddings = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):  # not a token model (a PreTrainedModel without embeddings)
        embeddings = None
    if isinstance(embeddings, nn.Embedding):
        sizes.add(embeddings.num_embeddings)
    return sizes


def check_same_inputs(
    student: nn.Module, teacher: nn.Module, student_tokenizer: Any = None, columns: list[str] | None = None
) -> None:
    """Refuse a teacher that cannot read the student's inputs, when the data's `columns` carry no `teacher_*` inputs
    of its own: models with another main input (a text teacher for an image student), or another token vocabulary
    (the teacher would read the student's token ids as its own: garbage, or torch's bare `IndexError`). Unknown
    columns (a plain torch dataset) are not checked."""
    if columns is None or batch_convention.distillation_columns(columns):
        return
    s_name, t_name = type(student).__name__, type(teacher).__name__
    s_input = getattr(student, "main_input_name", None)
    t_input = getattr(teacher, "main_input_name", None)
    if s_input and t_input and s_input != t_input:
        raise ValueError(
            f"The student ({s_name}) and the teacher ({t_name}) take different inputs: the student reads "
            f"{s_input!r}, the teacher {t_input!r}. Distil from a teacher of the same modality, or give the teacher "
            f"its own inputs as a 'teacher_{t_input}' column."
        )
    s_sizes, t_sizes = _vocabulary_sizes(student), _vocabulary_sizes(teacher)
    if student_tokenizer is not None and hasattr(student_tokenizer, "get_vocab"):
        s_sizes.add(len(student_tokenizer))  # ids up to the tokenizer's length reach the teacher's embedding
    if s_sizes and t_sizes and max(s_sizes) != max(t_sizes):
        raise ValueError(
            f"The teacher ({t_name}, vocab_size {max(t_sizes)}) and the student ({s_name}, vocab_size "
            f"{max(s_sizes)}) have different vocabularies, and the data has no teacher_input_ids: the teacher would "
            "read the student's token ids as its own. Tokenize the text for both models with "
            "hf_kd.data.tokenize_dataset(dataset, student_tokenizer, text_columns, ..., teacher_tokenizer=...) "
            "(it adds teacher_input_ids / teacher_attention_mask), and collate with "
            "hf_kd.data.DataCollatorWithTeacherPadding(student_tokenizer, teacher_tokenizer)."
        )


def cast_floating_inputs(inputs: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """Float inputs (pixel values, embeddings) in the teacher's own dtype: a bf16/fp16 teacher held for inference
    only would otherwise meet float32 pixels (integer token ids are left alone)."""
    parameter = next(iter(model.parameters()), None)
    if parameter is None or not parameter.is_floating_point() or parameter.dtype == torch.float32:
        return inputs
    return {
        key: value.to(parameter.dtype) if torch.is_tensor(value) and value.is_floating_point() else value
        for key, value in inputs.items()
    }


TEACHER_LOGITS_DTYPES = ("float32", "float16")
TEACHER_DTYPES = ("float32", "bfloat16", "float16")


def columns_teacher_reads(columns: list[str], teacher: nn.Module) -> list[str]:
    """The columns the teacher reads: its own `teacher_*` columns when there are any, otherwise the columns its
    `forward` accepts (labels excluded: the teacher's loss is never needed)."""
    import inspect

    own = batch_convention.teacher_input_columns(columns)
    if own:
        return own
    model = extract_model_from_parallel(teacher)
    # An ensemble of teachers (hf_kd.teacher.ensemble) names the inputs its teachers read.
    accepted = set(getattr(model, "input_names", None) or inspect.signature(model.forward).parameters)
    accepted -= {"labels", "label", "return_dict"}
    found = [c for c in columns if c in accepted]
    if not found:
        raise ValueError(
            f"None of the dataset's columns {columns} is an input of the teacher ({type(model).__name__}.forward "
            f"takes {sorted(accepted)}): prepare the dataset (decode / tokenize) before computing teacher logits."
        )
    return found


def run_teacher(teacher: nn.Module, inputs: dict[str, Any], **forward_kwargs):
    """The frozen teacher's outputs (a `ModelOutput`) for its inputs, without gradients; float inputs are cast to the
    teacher's dtype. `forward_kwargs` (e.g. `output_hidden_states=True`) go to its `forward`."""
    with torch.no_grad():
        return teacher(**cast_floating_inputs(inputs, teacher), **forward_kwargs)


def check_teacher_logits(values, num_labels: int | None, name: str = "dataset") -> None:
    """Refuse teacher logits that cannot be soft targets for the student: the wrong number of classes (checked on the
    first row), or NaN / inf anywhere. `values`: an array or tensor `(N, ..., C)`, or one array per row (ragged
    token-level logits). `name` says which dataset holds them."""
    import numpy as np

    rows = values.numpy() if torch.is_tensor(values) else values
    first = np.asarray(rows[0])
    if num_labels is not None and first.shape[-1] != num_labels:
        raise ValueError(
            f"The {name}'s teacher_logits have {first.shape[-1]} columns per example but the student has "
            f"num_labels={num_labels}: the teacher logits must hold one value per class of the student."
        )
    if getattr(rows, "dtype", None) == object or isinstance(rows, list):
        finite = all(np.isfinite(np.asarray(row, dtype=np.float32)).all() for row in rows)
    else:
        finite = bool(np.isfinite(rows).all())
    if not finite:
        raise ValueError(
            f"The {name}'s teacher_logits column contains NaN or inf: the teacher's logits must be finite "
            "(check the model or API that produced them, and the storage dtype: float16 overflows above 65504)."
        )
