"""The model card of a distilled student, and publishing the student to the Hugging Face Hub.

The card is made in one place, [`generate_model_card`], from what the run knows: the teacher (name, size), the student
(architecture, size, compression ratio), the dataset, the distillation settings and, when the run wrote one, the
distillation report (teacher / CE-only student / distilled student, with its plot). Its YAML header carries the
metadata the Hub reads: `library_name`, `pipeline_tag`, `tags`, `datasets`, `base_model`, `metrics` and a
`model-index` with the student's evaluation results.

[`DistillationTrainer.create_model_card`] calls [`create_model_card`], so `trainer.push_to_hub()` uploads this card.
[`push_to_hub`] wraps that call so that a failed upload (Hub unreachable, no token, token rejected) raises a
[`HubPushError`] naming the Hub and the repository, after the student and its card are saved locally.

About `base_model`: the Hub's `base_model_relation` knows `adapter`, `merge`, `quantized` and `finetune`, and infers
one of them when it is absent; it has no relation for distillation. `base_model` records where a model's *weights*
come from, so the card sets it to the student's own starting checkpoint when that is a Hub model (relation
`finetune`), and never to the teacher, whose weights the student does not inherit. The teacher is named in the card.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import huggingface_hub
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import HFValidationError, validate_repo_id

try:  # huggingface_hub >= 2 talks HTTP through httpx2, 1.x through httpx
    from httpx2 import HTTPError as _TransportError
except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
    from httpx import HTTPError as _TransportError


REPORT_NAME = "distillation_report.json"
MODEL_CARD_NAME = "README.md"
TEACHER_LOGITS_COLUMN = "teacher_logits"  # the batch column `DistillationTrainer` reads teacher logits from
DEFAULT_TAGS = ["knowledge-distillation", "hf_kd"]

HINTON_2015_BIBTEX = """\
@misc{hinton2015distilling,
    title         = {{Distilling the Knowledge in a Neural Network}},
    author        = {Geoffrey Hinton and Oriol Vinyals and Jeff Dean},
    year          = 2015,
    eprint        = {1503.02531},
    archivePrefix = {arXiv},
    primaryClass  = {stat.ML},
    url           = {https://arxiv.org/abs/1503.02531}
}"""

# Head class name suffix -> Hub pipeline tag, for a student whose task the run did not state.
_TASK_BY_HEAD = {
    "ForImageClassification": "image-classification",
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForAudioClassification": "audio-classification",
    "ForCausalLM": "text-generation",
    "ForQuestionAnswering": "question-answering",
}
_EXAMPLE_INPUT = {
    "image-classification": '"path/or/url/to/image.png"',
    "text-classification": '"I loved this movie!"',
    "token-classification": '"My name is Clara and I live in Berkeley."',
    "audio-classification": '"path/to/audio.wav"',
    "text-generation": '"Once upon a time"',
}
_SETTING_LABELS = {
    "temperature": "Temperature `T`",
    "alpha": "`alpha` (weight of the teacher's term)",
    "loss_type": "Soft-target loss",
    "teacher_logits": "Teacher logits",
    "num_train_epochs": "Epochs",
    "max_steps": "Training steps",
    "learning_rate": "Learning rate",
    "per_device_train_batch_size": "Batch size (per device)",
    "seed": "Seed",
}
_LOSS_DESCRIPTIONS = {
    "kl": "`kl`: forward KL divergence, Hinton et al. (2015)",
    "reverse_kl": "`reverse_kl`: KL(student ‖ teacher), mode-seeking",
    "mse": "`mse`: squared error between the logits",
}
# Evaluation log keys that are not quality metrics.
_NOT_METRICS = {"loss", "loss_ce", "loss_kd", "runtime", "samples_per_second", "steps_per_second", "epoch"}

MODEL_CARD_TEMPLATE = """\
---
{{ card_data }}
---

# {{ model_name }}

{{ summary }}

## How to use

```python
from transformers import pipeline

{{ pipeline_var }} = pipeline("{{ pipeline_tag }}", model="{{ repo_id }}"{% if trust_remote_code %}, trust_remote_code=True{% endif %})
{{ pipeline_var }}({{ example_input }})
```
{% if trust_remote_code %}
The architecture's code ships with the weights (`auto_map` in `config.json`), so `trust_remote_code=True` loads it
without installing hf_kd.
{% endif %}
## Teacher and student

| | Teacher | Student |
|---|---|---|
| Model | {{ teacher_name }} | {{ student_name }} |
| Architecture | {{ teacher_architecture }} | {{ student_architecture }} |
| Parameters | {{ teacher_parameters }} | {{ student_parameters }} |
{% if compression %}
{{ compression }}
{% endif %}
## Training procedure

The student was trained with hf_kd's `DistillationTrainer` (a `transformers.Trainer`) by knowledge
distillation ([Hinton et al., 2015](https://huggingface.co/papers/1503.02531)) from the frozen teacher{% if dataset_text %}, on {{ dataset_text }}{% endif %}:

```
loss = (1 - alpha) * CE(student_logits, labels) + alpha * T**2 * KL(softmax(teacher_logits / T) || softmax(student_logits / T))
```

| Setting | Value |
|---|---|
{% for label, value in settings %}| {{ label }} | {{ value }} |
{% endfor %}{% if results_table %}
## Results

{{ results_intro }}

{{ results_table }}
{% if plot %}
![Accuracy, size and latency of the teacher, the student trained on labels only and the distilled student]({{ plot }})
{% endif %}{% endif %}
### Framework versions

{% for name, version in versions %}- {{ name }}: {{ version }}
{% endfor %}
## Citation

```bibtex
{{ citation }}
```
"""


class HubPushError(RuntimeError):
    """Publishing to the Hugging Face Hub failed. The model and its card were saved locally first."""


# ---------------------------------------------------------------------------------------------------------------------
# Helpers


def _is_hub_id(name: Any) -> bool:
    """True for a string that names a Hub repository rather than a local directory."""
    if not isinstance(name, str) or not name or os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _as_list(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [v for v in value if v]


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


def _count_parameters(model: Any) -> int | None:
    if model is None:
        return None
    if hasattr(model, "num_parameters"):
        return int(model.num_parameters())
    return sum(p.numel() for p in model.parameters())


def _architecture(model: Any) -> str | None:
    if model is None:
        return None
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    name = type(model).__name__
    return f"`{name}` ({model_type})" if model_type else f"`{name}`"


def _task_of(model: Any) -> str | None:
    name = type(model).__name__
    for suffix, task in _TASK_BY_HEAD.items():
        if name.endswith(suffix):
            return task
    return None


def _teacher_link(name: str | None) -> str:
    if not name:
        return "unnamed"
    if name == "trained here":
        return "trained in the same run"
    return f"[{name}](https://huggingface.co/{name})" if _is_hub_id(name) else f"`{name}`"


def _format_count(n: int | None) -> str:
    return f"{n:,}" if n is not None else "unknown"


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _versions() -> list[tuple[str, str]]:
    from importlib import metadata

    versions = []
    for label, dist in (
        ("hf_kd", "hf_kd"),
        ("Transformers", "transformers"),
        ("PyTorch", "torch"),
        ("Datasets", "datasets"),
        ("Hugging Face Hub", "huggingface_hub"),
    ):
        try:
            versions.append((label, metadata.version(dist)))
        except metadata.PackageNotFoundError:
            continue
    return versions


def _atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader (or a crash) never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_copy(src: Path, dst: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------------------------------
# The report


def load_report(report: str | os.PathLike | Mapping | None) -> tuple[dict | None, Path | None]:
    """
    Read a distillation report (the `distillation_report.json` schema of `hf_kd.report`).

    Args:
        report: the JSON file, the directory holding it, or the report itself as a dict.

    Returns:
        `(report, directory)`: the report, and the directory its relative paths (the plot) are relative to
        (`None` for a dict).

    Raises:
        `FileNotFoundError`: the path holds no report. `ValueError`: the file is not a report.
    """
    if report is None:
        return None, None
    if isinstance(report, Mapping):
        return dict(report), None
    path = Path(report)
    if path.is_dir():
        path = path / REPORT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"report: no distillation report at {path} (expected a {REPORT_NAME} file).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"report: {path} is not valid JSON ({err}).") from err
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ValueError(f"report: {path} is not a distillation report (expected a JSON object with a 'models' list).")
    return data, path.parent


def _report_entry(report: Mapping | None, name: str) -> dict | None:
    for entry in (report or {}).get("models", []):
        if entry.get("name") == name:
            return entry
    return None


def _results_table(report: Mapping) -> str:
    metric = report.get("metric", "accuracy")
    metric_label = metric.replace("_", " ").capitalize()
    rows = [
        f"| Model | Parameters | Size (MB) | {metric_label} | Agreement with teacher | Latency (ms/example) | Training time (s) |",
        "|---|---|---|---|---|---|---|",
    ]

    def pct(value):
        return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else "–"

    def num(value, fmt):
        return format(value, fmt) if isinstance(value, (int, float)) and math.isfinite(value) else "–"

    for entry in report.get("models", []):
        label = entry.get("label") or entry.get("name", "?")
        if entry.get("name") == "student_kd":
            label = f"**{label}** (this model)"
        rows.append(
            f"| {label} | {num(entry.get('parameters'), ',')} | {num(entry.get('size_mb'), '.3f')} | "
            f"{pct(entry.get(metric))} | {pct(entry.get('agreement_with_teacher'))} | "
            f"{num(entry.get('latency_ms'), '.3f')} | {num(entry.get('train_time_s'), '.1f')} |"
        )
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------------------------------
# The card


def distillation_settings(args: Any, train_dataset: Any = None, teacher_logits: str | None = None) -> dict[str, Any]:
    """
    The distillation settings of a run, keyed as in the report's `settings`.

    `teacher_logits` is `"precomputed"` when the training set carries a `teacher_logits` column (the teacher never ran
    during training), `"live"` otherwise, unless given.
    """
    if teacher_logits is None:
        columns = getattr(train_dataset, "column_names", None) or []
        teacher_logits = "precomputed" if TEACHER_LOGITS_COLUMN in columns else "live"
    return {
        "temperature": args.temperature,
        "alpha": args.alpha,
        "loss_type": args.loss_type,
        "teacher_logits": teacher_logits,
        "num_train_epochs": args.num_train_epochs if args.max_steps is None or args.max_steps <= 0 else None,
        "max_steps": args.max_steps if args.max_steps is not None and args.max_steps > 0 else None,
        "learning_rate": args.learning_rate,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "seed": args.seed,
    }


def generate_model_card(
    *,
    model_name: str,
    student: Any,
    settings: Mapping[str, Any],
    repo_id: str | None = None,
    teacher: Any = None,
    teacher_name: str | None = None,
    teacher_parameters: int | None = None,
    datasets: str | list[str] | None = None,
    dataset_name: str | None = None,
    task: str | None = None,
    report: Mapping | None = None,
    eval_metrics: Mapping[str, float] | None = None,
    eval_split: str | None = None,
    plot: str | None = None,
    base_model: str | None = None,
    tags: str | list[str] | None = None,
    license: str | None = None,
    language: str | list[str] | None = None,
) -> ModelCard:
    """
    The model card of a distilled student.

    Args:
        model_name (`str`): the card's title and `model-index` name.
        student: the trained student (a `PreTrainedModel`).
        settings (`Mapping`): the distillation settings, see [`distillation_settings`].
        repo_id (`str`, *optional*): the Hub repository, used in the "How to use" snippet. Defaults to `model_name`.
        teacher: the teacher model, for its architecture and parameter count, when it is at hand.
        teacher_name (`str`, *optional*): where the teacher came from (a Hub id, a path, or "trained here").
        teacher_parameters (`int`, *optional*): the teacher's parameter count when `teacher` is not given.
        datasets (`str` or `list[str]`, *optional*): Hub ids of the training datasets (the `datasets` metadata).
        dataset_name (`str`, *optional*): a readable dataset name for the text. Defaults to the first of `datasets`.
        task (`str`, *optional*): the pipeline tag. Inferred from the student's head class when not given.
        report (`Mapping`, *optional*): a distillation report: its table becomes the card's results, the distilled
            student's accuracy its `model-index` result.
        eval_metrics (`Mapping`, *optional*): evaluation metrics (`{"accuracy": 0.97}`) for the `model-index` when
            there is no report.
        eval_split (`str`, *optional*): the dataset split the results were measured on.
        plot (`str`, *optional*): the report's plot, relative to the card (it must be uploaded with it).
        base_model (`str`, *optional*): the Hub model the student's weights started from, if any (see the module
            docstring: never the teacher).
        tags, license, language: more metadata.

    Returns:
        [`huggingface_hub.ModelCard`]
    """
    report = dict(report) if report else None
    task = task or (report or {}).get("task") or _task_of(student) or "image-classification"
    datasets = _unique(_as_list(datasets))
    if not datasets and report and _is_hub_id(report.get("dataset")):
        datasets = [report["dataset"]]
    dataset_name = dataset_name or (datasets[0] if datasets else (report or {}).get("dataset"))
    repo_id = repo_id or model_name

    student_parameters = _count_parameters(student)
    teacher_entry = _report_entry(report, "teacher")
    if teacher_parameters is None:
        teacher_parameters = _count_parameters(teacher)
    if teacher_parameters is None and teacher_entry:
        teacher_parameters = teacher_entry.get("parameters")
    teacher_name = teacher_name or (report or {}).get("teacher")
    if not teacher_name and teacher is not None:
        teacher_name = getattr(getattr(teacher, "config", None), "_name_or_path", None) or None

    compression = None
    if teacher_parameters and student_parameters:
        ratio = teacher_parameters / student_parameters
        compression = (
            f"The student has **{ratio:.2f}× fewer parameters** than its teacher "
            f"({_format_count(student_parameters)} vs {_format_count(teacher_parameters)}, "
            f"{100 * student_parameters / teacher_parameters:.1f}% of the teacher's size)."
        )

    # `model-index`: the distilled student's own results, so the Hub renders them on the model page.
    metric_name = (report or {}).get("metric", "accuracy")
    results: dict[str, float] = {}
    kd_entry = _report_entry(report, "student_kd")
    if kd_entry and isinstance(kd_entry.get(metric_name), (int, float)):
        results[metric_name] = float(kd_entry[metric_name])
    elif eval_metrics:
        results = {k: float(v) for k, v in eval_metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    eval_results = None
    if results and dataset_name:
        eval_results = [
            EvalResult(
                task_type=task,
                task_name=task.replace("-", " ").capitalize(),
                dataset_type=datasets[0] if datasets else dataset_name,
                dataset_name=dataset_name,
                dataset_split=eval_split,
                metric_type=name,
                metric_name=name.replace("_", " ").capitalize(),
                metric_value=round(value, 6),
            )
            for name, value in results.items()
        ]

    card_data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag=task,
        tags=_unique(DEFAULT_TAGS + _as_list(tags)),
        datasets=datasets or None,
        metrics=list(results) or None,
        eval_results=eval_results,
        base_model=base_model,
        base_model_relation="finetune" if base_model else None,
        license=license,
        language=language,
    )

    dataset_text = None
    if dataset_name:
        dataset_text = (
            f"[{dataset_name}](https://huggingface.co/datasets/{dataset_name})"
            if dataset_name in datasets
            else f"`{dataset_name}`"
        )
    student_desc = _architecture(student) or "–"
    teacher_size = f"{_format_count(teacher_parameters)}-parameter " if teacher_parameters else ""
    summary = (
        f"A {student_desc} distilled from a {teacher_size}teacher ({_teacher_link(teacher_name)}) with hf_kd"
        + (f" on {dataset_text}" if dataset_text else "")
        + (f", for {task.replace('-', ' ')}." if task else ".")
    )

    setting_rows = []
    for key, value in settings.items():
        if value is None:
            continue
        if key == "loss_type":
            value = _LOSS_DESCRIPTIONS.get(value, f"`{value}`")
        elif key == "teacher_logits":
            value = {
                "live": "live: the frozen teacher ran on every training batch",
                "precomputed": "precomputed: the teacher ran once over the training set before training",
            }.get(value, str(value))
        setting_rows.append((_SETTING_LABELS.get(key, f"`{key}`"), _format_value(value)))

    results_table = _results_table(report) if report and report.get("models") else None
    if results_table is None and results:
        results_table = "| Metric | Value |\n|---|---|\n" + "\n".join(
            f"| {name} | {value:.4f} |" for name, value in results.items()
        )
    results_intro = (
        "The teacher, a student of the same architecture trained on the labels only (cross-entropy, no teacher), and "
        f"this distilled student, evaluated on {dataset_text or 'the evaluation set'}"
        + (f" ({eval_split} split)" if eval_split else "")
        + ". Agreement is the fraction of examples where a model predicts the teacher's class; latency is per example "
        "at batch size 1."
        if report
        else f"Evaluation of this model{' on ' + dataset_text if dataset_text else ''}"
        + (f" ({eval_split} split)" if eval_split else "")
        + " at the end of training."
    )

    trust_remote_code = bool(getattr(getattr(student, "config", None), "auto_map", None))
    return ModelCard.from_template(
        card_data,
        template_str=MODEL_CARD_TEMPLATE,
        model_name=model_name,
        repo_id=repo_id,
        summary=summary,
        pipeline_tag=task,
        pipeline_var="classifier" if "classification" in task else "pipe",
        example_input=_EXAMPLE_INPUT.get(task, "..."),
        trust_remote_code=trust_remote_code,
        teacher_name=_teacher_link(teacher_name),
        teacher_architecture=_architecture(teacher) or "–",
        teacher_parameters=_format_count(teacher_parameters),
        student_name=f"`{model_name}` (this model)",
        student_architecture=student_desc,
        student_parameters=_format_count(student_parameters),
        compression=compression,
        dataset_text=dataset_text,
        settings=setting_rows,
        results_intro=results_intro,
        results_table=results_table,
        plot=plot,
        versions=_versions(),
        citation=HINTON_2015_BIBTEX,
    )


def write_model_card(card: ModelCard | str, output_dir: str | os.PathLike) -> Path:
    """Write `card` to `output_dir/README.md` atomically (a temporary file renamed into place)."""
    path = Path(output_dir) / MODEL_CARD_NAME
    _atomic_write_text(path, str(card))
    return path


def _last_eval_metrics(log_history: list[dict]) -> dict[str, float]:
    for entry in reversed(log_history or []):
        metrics = {
            key[len("eval_") :]: value
            for key, value in entry.items()
            if key.startswith("eval_") and key[len("eval_") :] not in _NOT_METRICS and isinstance(value, (int, float))
        }
        if metrics:
            return metrics
    return {}


def create_model_card(
    trainer: Any,
    *,
    model_name: str | None = None,
    report: str | os.PathLike | Mapping | None = None,
    language: str | list[str] | None = None,
    license: str | None = None,
    tags: str | list[str] | None = None,
    finetuned_from: str | None = None,
    tasks: str | list[str] | None = None,
    dataset_tags: str | list[str] | None = None,
    dataset: str | list[str] | None = None,
    dataset_args: str | list[str] | None = None,
    eval_split: str | None = None,
) -> ModelCard | None:
    """
    Write the distillation model card of `trainer`'s student to `trainer.args.output_dir/README.md`.

    The arguments after `report` are those of [`~transformers.Trainer.create_model_card`]. The report defaults to
    `distillation_report.json` in the output directory when there is one; its plot is copied next to the card, so
    that an upload of the output directory carries it.

    Returns:
        The card (`None` on processes other than the main one, which write nothing).
    """
    if not trainer.is_world_process_zero():
        return None
    args = trainer.args
    output_dir = Path(args.output_dir)
    if report is None and (output_dir / REPORT_NAME).is_file():
        report = output_dir
    report, report_dir = load_report(report)

    plot = None
    if report and report.get("plot") and report_dir is not None:
        plot_src = report_dir / report["plot"]
        if plot_src.is_file():
            plot = plot_src.name
            output_dir.mkdir(parents=True, exist_ok=True)
            if plot_src.resolve() != (output_dir / plot).resolve():
                _atomic_copy(plot_src, output_dir / plot)

    student = trainer.accelerator.unwrap_model(trainer.model)
    teacher = getattr(trainer, "teacher_model", None)
    if teacher is not None:
        teacher = trainer.accelerator.unwrap_model(teacher)
    model_name = model_name or (args.hub_model_id or output_dir.name).split("/")[-1]
    repo_id = getattr(trainer, "hub_model_id", None) or args.hub_model_id or model_name

    # The student's own starting checkpoint, if it came from the Hub (never the teacher: see the module docstring).
    base_model = finetuned_from
    if base_model is None:
        name_or_path = getattr(getattr(student, "config", None), "_name_or_path", "")
        base_model = name_or_path if _is_hub_id(name_or_path) else None

    teacher_name = args.teacher_model_name_or_path
    if not teacher_name and teacher is not None:
        teacher_name = getattr(getattr(teacher, "config", None), "_name_or_path", None) or None
    if report and report.get("teacher"):
        teacher_name = report["teacher"]

    datasets = _as_list(dataset_tags) or [d for d in _as_list(dataset) if _is_hub_id(d)]
    dataset_name = (_as_list(dataset) or [None])[0]
    # The training set tells whether the teacher ran live; without it, trust the report.
    teacher_logits = (
        None if trainer.train_dataset is not None else (report or {}).get("settings", {}).get("teacher_logits")
    )
    settings = distillation_settings(args, trainer.train_dataset, teacher_logits=teacher_logits)
    card = generate_model_card(
        model_name=model_name,
        repo_id=repo_id,
        student=student,
        teacher=teacher,
        teacher_name=teacher_name,
        settings=settings,
        datasets=datasets,
        dataset_name=dataset_name,
        task=(_as_list(tasks) or [None])[0],
        report=report,
        eval_metrics=_last_eval_metrics(trainer.state.log_history),
        eval_split=eval_split,
        plot=plot,
        base_model=base_model,
        tags=_unique(_as_list(tags) + list(getattr(trainer, "_tag_names", []) or [])),
        license=license,
        language=language,
    )
    write_model_card(card, output_dir)
    return card


# ---------------------------------------------------------------------------------------------------------------------
# Publishing


def _hub_endpoint() -> str:
    try:
        from transformers.utils.hub import hf_api

        return hf_api().endpoint
    except ImportError:  # pragma: no cover - older transformers
        return huggingface_hub.constants.ENDPOINT


def _explain(err: BaseException) -> str:
    """What went wrong, in words, from a huggingface_hub / HTTP error."""
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    if status == 401:
        return "the Hub rejected the token (HTTP 401 Unauthorized): check that it is valid and not expired"
    if status == 403:
        return "the token may not write to this repository (HTTP 403 Forbidden): use a token with write access"
    if status == 404:
        return "the repository or its namespace was not found (HTTP 404)"
    if status is not None and status >= 500:
        return f"the Hub answered with a server error (HTTP {status}); try again later"
    if status is not None:
        return f"the Hub answered HTTP {status}"
    if isinstance(err, HfHubHTTPError) or not isinstance(err, _TransportError):
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"{type(err).__name__}: {first_line}"
    return f"the Hub could not be reached ({type(err).__name__}: {err})"


def push_to_hub(
    trainer: Any,
    *,
    report: str | os.PathLike | Mapping | None = None,
    commit_message: str = "End of training",
    blocking: bool = True,
    token: str | None = None,
    revision: str | None = None,
    private: bool | None = None,
    **card_kwargs,
):
    """
    Publish the trained student to the Hub: `trainer.push_to_hub()`, with the distillation card, and with errors that
    say what failed.

    The student (config, safetensors weights, image processor or tokenizer, its remote-code files) and its card are
    saved to `trainer.args.output_dir` first; the upload comes last. If the Hub cannot be reached, no token is found,
    or the Hub refuses the push, a [`HubPushError`] names the Hub endpoint and the repository, and the local output is
    complete. What is uploaded is the output directory, as `Trainer.push_to_hub` does, less `checkpoint-*` and `_*`:
    keep the teacher and other models out of it.

    Args:
        trainer ([`DistillationTrainer`]): the trainer of the student.
        report (*optional*): the distillation report to put in the card (a path or a dict).
        commit_message, blocking, token, revision, private: as for [`~transformers.Trainer.push_to_hub`]. With
            `blocking=False`, upload errors surface in the returned future, not here.
        card_kwargs: more [`create_model_card`] arguments (`dataset_tags`, `license`, `tags`, ...).

    Returns:
        The `CommitInfo` of the upload (a future when `blocking=False`).
    """
    from transformers import Trainer

    args = trainer.args
    repo_id = getattr(trainer, "hub_model_id", None) or args.hub_model_id or Path(args.output_dir).absolute().name
    endpoint = _hub_endpoint()
    token = token if token is not None else args.hub_token
    output_dir = os.path.abspath(args.output_dir)

    def save_locally():
        trainer.save_model(_internal_call=True)
        trainer.create_model_card(report=report, **card_kwargs)

    def failure(what: str) -> HubPushError:
        return HubPushError(
            f"Could not push to the Hugging Face Hub ({endpoint}), repository '{repo_id}': {what}. The student and "
            f"its model card are saved in {output_dir}; once the problem is solved, push them with "
            f"`hf upload {repo_id} {output_dir} --exclude 'checkpoint-*'`."
        )

    if token is None and huggingface_hub.get_token() is None:
        save_locally()
        raise failure(
            "no Hugging Face token was found (pass --hub_token, set HF_TOKEN, or run `hf auth login` with a token "
            "that has write access)"
        )
    try:
        # Trainer.push_to_hub saves the student, calls `create_model_card` (the distillation card) and uploads.
        return Trainer.push_to_hub(
            trainer,
            commit_message=commit_message,
            blocking=blocking,
            token=token,
            revision=revision,
            private=private,
            report=report,
            **card_kwargs,
        )
    except (_TransportError, OSError) as err:
        # The repository is created before the student is saved: make sure the local output is complete.
        save_locally()
        raise failure(_explain(err)) from err
