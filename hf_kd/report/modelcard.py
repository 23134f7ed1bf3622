"""The model card of a distilled student, and the errors of publishing it to the Hugging Face Hub.

The card renders from what the run knows: the student and the teacher (architecture, size), the run's settings and,
when the run wrote one, its [`~hf_kd.report.DistillationReport`] (teacher / CE-only student / distilled student, with
its plot), the one source of the results. The text is the Jinja template `templates/model_card.md`; the YAML header
is huggingface_hub's `ModelCardData` (`library_name`, `pipeline_tag`, `tags`, `datasets`, `base_model`, `license`,
`metrics` and a `model-index` with the student's results).

The flow follows TRL's trainers: `DistillationTrainer.create_model_card` calls [`create_model_card`] once, and
`DistillationTrainer.push_to_hub` is `Trainer.push_to_hub` (which saves the student, writes the card and uploads)
inside [`hub_push_errors`], which turns a failed upload into a [`HubPushError`] naming the Hub and the repository,
after the student and its card are saved locally.

About `base_model`: the Hub's `base_model_relation` knows `adapter`, `merge`, `quantized` and `finetune`, and infers
one of them when it is absent; it has no relation for distillation. `base_model` records where a model's *weights*
come from, so the card sets it to the student's own starting checkpoint when that is a Hub model (relation
`finetune`), and never to the teacher, whose weights the student does not inherit. The teacher is named in the card.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import (
    HFValidationError,
)
from huggingface_hub.utils import validate_repo_id
from transformers.modelcard import parse_log_history

from ..batch import TEACHER_LOGITS
from ..losses.logit import distillation_loss
from ..teacher.ensemble import ENSEMBLE_CONFIG_NAME, TeacherEnsemble
from ..utils import atomic_write
from .measure import count_parameters, model_label
from .report import SETTING_LABELS, DistillationReport, run_settings, schedule_key

MODEL_CARD_NAME = "README.md"
TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"
DEFAULT_TAGS = ["knowledge-distillation", "hf_kd"]
DEFAULT_LICENSE = "apache-2.0"  # hf_kd's own (setup.py); `license=` sets the student's

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
# Short human words for the setting values; the definitions are hf_kd.losses.logit'.
_VALUE_WORDS = {
    "loss_type": {
        "kl": "`kl`: forward KL divergence, Hinton et al. (2015)",
        "reverse_kl": "`reverse_kl`: KL(student ‖ teacher), mode-seeking",
        "mse": "`mse`: squared error between the logits",
    },
    "teacher_logits": {
        "live": "live: the frozen teacher ran on every training batch",
        "precomputed": "precomputed: the teacher ran once over the training set before training",
    },
}
# Evaluation log keys that are not quality metrics.
_NOT_METRICS = {"loss", "loss_ce", "loss_kd", "runtime", "samples_per_second", "steps_per_second", "epoch", "step"}


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
    return [value] if isinstance(value, str) else [v for v in value if v]


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


def _format_architecture(class_name: str | None, model_type: str | None) -> str:
    if not class_name:
        return "–"
    return f"`{class_name}` ({model_type})" if model_type else f"`{class_name}`"


def _architecture(model: Any) -> str:
    if model is None:
        return "–"
    return _format_architecture(type(model).__name__, getattr(getattr(model, "config", None), "model_type", None))


def _saved_architecture(directory: Path | None) -> str:
    """A saved model's architecture as [`_architecture`] writes it, read off its `config.json` (or an ensemble's
    `ensemble_config.json`): the card of a chain's student describes models its trainer does not hold."""
    if directory is None:
        return "–"
    for name, class_name in (("config.json", None), (ENSEMBLE_CONFIG_NAME, TeacherEnsemble.__name__)):
        if (directory / name).is_file():
            config = json.loads((directory / name).read_text())
            class_name = class_name or (config.get("architectures") or [None])[0]
            return _format_architecture(class_name, config.get("model_type"))
    return "–"


def _teacher_entry(report: DistillationReport | None):
    """The report's row of the run's teacher: `teacher`, or an ensemble's `ensemble` row."""
    return (report.model("teacher") or report.model("ensemble")) if report else None


def _chain_columns(report: DistillationReport | None, report_dir: Path | None, last: Any) -> list[dict[str, str]]:
    """The card table's column of each assistant of a teacher-assistant chain (`report.lineage`), each with its own
    architecture and size: the last one is the student's teacher (`last`), the others are read from their saved
    directories. Empty without assistants."""
    names = (report.lineage or {}).get("assistants", []) if report else []
    columns = []
    for name in names:
        row = report.model(name)
        saved = report_dir / row.path if row is not None and report_dir is not None else None
        is_last = name == names[-1] and last is not None
        parameters = count_parameters(last) if is_last else getattr(row, "parameters", None)
        columns.append({
            "label": model_label(name), "name": f"`{name}`",
            "architecture": _architecture(last) if is_last else _saved_architecture(saved),
            "parameters": _format_count(parameters),
        })  # fmt: skip
    return columns


def _task_of(model: Any) -> str | None:
    return next((task for suffix, task in _TASK_BY_HEAD.items() if type(model).__name__.endswith(suffix)), None)


def _teacher_link(name: str | None) -> str:
    if not name:
        return "unnamed"
    if name == "trained here":
        return "trained in the same run"
    return f"[{name}](https://huggingface.co/{name})" if _is_hub_id(name) else f"`{name}`"


def _format_count(n: int | None) -> str:
    return f"{n:,}" if n is not None else "unknown"


def _loss_formula() -> str | None:
    """The objective's one definition: the `loss = ...` line of `hf_kd.losses.distillation_loss`'s docstring."""
    lines = (inspect.getdoc(distillation_loss) or "").splitlines()
    return next((line.strip() for line in lines if line.strip().startswith("loss =")), None)


def _versions() -> list[tuple[str, str]]:
    from importlib import metadata

    versions = []
    for label, dist in (("hf_kd", "hf_kd"), ("Transformers", "transformers"), ("PyTorch", "torch"),
                        ("Datasets", "datasets"), ("Hugging Face Hub", "huggingface_hub")):  # fmt: skip
        try:
            versions.append((label, metadata.version(dist)))
        except metadata.PackageNotFoundError:
            continue
    return versions


def _setting_words(key: str, value: Any) -> str:
    """One setting's value in the card: a list (feature pairs, teacher weights) as its items, a float compactly."""
    if isinstance(value, (list, tuple)):
        return ", ".join(f"`{item}`" for item in value)
    if isinstance(value, float):
        return _VALUE_WORDS.get(key, {}).get(value, f"{value:g}")
    return _VALUE_WORDS.get(key, {}).get(value, str(value))


def setting_rows(settings: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The card's settings table: `(label, value)` in [`~hf_kd.report.SETTING_LABELS`] order, then unknown keys."""
    rows = []
    for key in [*SETTING_LABELS, *(k for k in settings if k not in SETTING_LABELS)]:
        value = settings.get(key)
        if value is None or (key == "num_train_epochs" and schedule_key(settings) == "max_steps"):
            continue
        rows.append((SETTING_LABELS.get(key, f"`{key}`"), _setting_words(key, value)))
    return rows


def final_eval_metrics(log_history: list[dict]) -> dict[str, float]:
    """The last evaluation's quality metrics in a Trainer's log history (`{"accuracy": 0.97}`), read with
    `transformers.modelcard.parse_log_history` (which names them `"Accuracy"`, `"Loss Kd"`: turned back into keys)."""
    _, _, metrics = parse_log_history(log_history or [])
    names = {key: key.removeprefix("eval_").lower().replace(" ", "_") for key in metrics or {}}
    return {
        names[key]: float(value)
        for key, value in (metrics or {}).items()
        if names[key] not in _NOT_METRICS and isinstance(value, (int, float)) and math.isfinite(value)
    }


# ---------------------------------------------------------------------------------------------------------------------
# The card


def _results(card_data: ModelCardData, report, eval_metrics, dataset_name, dataset_text, eval_split) -> dict[str, Any]:
    """The card's results section, and the `model-index` (`card_data.eval_results`) from the same numbers."""
    metric = report.metric if report else "accuracy"
    kd = report.model("student_kd") if report else None
    results = {metric: kd.accuracy} if kd is not None else dict(eval_metrics or {})
    if results and card_data.pipeline_tag and dataset_name:
        task, dataset_type = card_data.pipeline_tag, (card_data.datasets or [dataset_name])[0]
        card_data.eval_results = [
            EvalResult(task_type=task, task_name=task.replace("-", " ").capitalize(), dataset_type=dataset_type,
                       dataset_name=dataset_name, dataset_split=eval_split, metric_type=name,
                       metric_name=name.replace("_", " ").capitalize(), metric_value=round(value, 6))
            for name, value in results.items()
        ]
        card_data.metrics = list(results)
    where = (f"on {dataset_text}" if dataset_text else "on the evaluation set") + (
        f" ({eval_split} split)" if eval_split else ""
    )
    if report and report.models:
        intro = (
            "The teacher, a student of the same architecture trained on the labels only (cross-entropy, no teacher), "
            f"and this distilled student, evaluated {where}. Agreement is the fraction of examples where a model "
            f"predicts the teacher's class. {report.latency_method()}"
        )
        return {"results_intro": intro, "results_table": report.results_table(highlight="student_kd")}
    table = "| Metric | Value |\n|---|---|\n" + "\n".join(f"| {k} | {v:.4f} |" for k, v in results.items())
    return {"results_intro": f"Evaluation of this model {where} at the end of training.", "results_table": table}


def model_card(
    card_data: ModelCardData,
    *,
    repo_id: str,
    student: Any,
    settings: Mapping[str, Any],
    report: DistillationReport | None = None,
    teacher: Any = None,
    teacher_name: str | None = None,
    dataset_name: str | None = None,
    eval_metrics: Mapping[str, float] | None = None,
    eval_split: str | None = None,
    plot: str | None = None,
    teacher_architecture: str | None = None,
    assistants: Iterable[Mapping[str, str]] = (),
) -> ModelCard:
    """
    Render the card of a distilled student from the template.

    Args:
        card_data (`ModelCardData`): The YAML header: `model_name`, `pipeline_tag`, `tags`, `datasets`, `license`...
            Its `eval_results` and `metrics` are filled here, from the report (or `eval_metrics`).
        repo_id (`str`): The id the "How to use" snippet loads: the Hub repository, or the local directory.
        student: The trained student. `settings` (`Mapping`): the run's, see [`~hf_kd.report.run_settings`].
        report ([`DistillationReport`], *optional*): Its table, notes and the teacher's recipe go into the card.
        teacher, teacher_name: The teacher model (for its architecture and size) and where it came from.
        dataset_name (`str`, *optional*): A readable dataset name; a Hub dataset of `card_data.datasets` is linked.
        eval_metrics (`Mapping`, *optional*): The final evaluation (`{"accuracy": 0.97}`) when there is no report.
        eval_split (`str`, *optional*), plot (`str`, *optional*): The split of the results; the plot, next to the card.
        teacher_architecture (`str`, *optional*): The teacher's architecture when `teacher` is not given (a chain).
        assistants: A teacher-assistant chain's columns of the table (`label`, `name`, `architecture`, `parameters`).
    """
    task = card_data.pipeline_tag
    student_parameters = count_parameters(student)
    teacher_entry = _teacher_entry(report)
    teacher_parameters = count_parameters(teacher) if teacher is not None else getattr(teacher_entry, "parameters", None)
    dataset_text = None
    if dataset_name:
        linked = dataset_name in (card_data.datasets or [])
        dataset_text = f"[{dataset_name}](https://huggingface.co/datasets/{dataset_name})" if linked else f"`{dataset_name}`"
    compression = None
    if teacher_parameters and student_parameters:
        compression = (
            f"The student has **{teacher_parameters / student_parameters:.2f}× fewer parameters** than its teacher "
            f"({_format_count(student_parameters)} vs {_format_count(teacher_parameters)}, "
            f"{100 * student_parameters / teacher_parameters:.1f}% of the teacher's size)."
        )
    teacher_size = f"{_format_count(teacher_parameters)}-parameter " if teacher_parameters else ""
    summary = (
        f"A {_architecture(student)} distilled from a {teacher_size}teacher ({_teacher_link(teacher_name)}) with hf_kd"
        + (f" on {dataset_text}" if dataset_text else "")
        + (f", for {task.replace('-', ' ')}." if task else ".")
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=card_data.model_name, repo_id=repo_id, summary=summary, pipeline_tag=task,
        pipeline_var="classifier" if "classification" in (task or "") else "pipe",
        example_input=_EXAMPLE_INPUT.get(task, "..."),
        trust_remote_code=bool(getattr(getattr(student, "config", None), "auto_map", None)),
        teacher_name=_teacher_link(teacher_name), assistants=list(assistants),
        teacher_architecture=teacher_architecture or _architecture(teacher),
        teacher_parameters=_format_count(teacher_parameters), student_name=f"`{card_data.model_name}` (this model)",
        student_architecture=_architecture(student), student_parameters=_format_count(student_parameters),
        compression=compression, teacher_recipe=report.recipe_text() if report else None, dataset_text=dataset_text,
        lineage=report.lineage_text() if report else None,
        loss_formula=_loss_formula(), settings=setting_rows(settings), notes=report.notes() if report else [],
        plot=plot, versions=_versions(), citation=HINTON_2015_BIBTEX,
        **_results(card_data, report, eval_metrics, dataset_name, dataset_text, eval_split),
    )  # fmt: skip


def _read_report(report: Any, output_dir: Path) -> tuple[DistillationReport | None, Path | None]:
    """The report (a [`DistillationReport`], a dict, a JSON path or its directory; default: the output directory's
    when it has one) and the directory its plot is relative to."""
    if report is None and (output_dir / "distillation_report.json").is_file():
        report = output_dir
    if report is None or isinstance(report, DistillationReport):
        return report, None
    if isinstance(report, Mapping):
        return DistillationReport.from_dict(dict(report)), None
    try:
        loaded = DistillationReport.load(report)
    except (OSError, ValueError) as err:  # name the argument that was wrong
        raise type(err)(f"report: {err}") from err
    return loaded, Path(report) if Path(report).is_dir() else Path(report).parent


def _hub_datasets(report: DistillationReport | None, dataset_tags, dataset) -> list[str]:
    """The Hub datasets the card's header names: the tags given, else the Hub ids among `dataset` or the report's."""
    datasets = _unique(_as_list(dataset_tags) or [d for d in _as_list(dataset) if _is_hub_id(d)])
    if not datasets and report is not None and _is_hub_id(report.dataset):
        datasets = [report.dataset]
    return datasets


def _copy_plot(report: DistillationReport | None, report_dir: Path | None, output_dir: Path) -> str | None:
    """The report's plot copied next to the card (so that an upload carries it); its file name, or None."""
    if report is None or not report.plot or report_dir is None or not (report_dir / report.plot).is_file():
        return None
    plot = Path(report.plot).name
    if (report_dir / report.plot).resolve() != (output_dir / plot).resolve():
        atomic_write(output_dir / plot, (report_dir / report.plot).read_bytes())
    return plot


def _trainer_settings(trainer: Any, teacher: Any) -> dict[str, Any]:
    """The run's settings read off the trainer, when there is no report to read them from."""
    columns = getattr(trainer.train_dataset, "column_names", None) or []
    carried = "precomputed" if TEACHER_LOGITS in columns else "live"
    return run_settings(trainer.args, teacher_logits=carried, teacher=teacher)


def create_model_card(
    trainer: Any,
    *,
    model_name: str | None = None,
    repo_id: str | None = None,
    report: str | os.PathLike | Mapping | DistillationReport | None = None,
    language: str | list[str] | None = None,
    license: str | None = None,
    tags: str | list[str] | None = None,
    finetuned_from: str | None = None,
    tasks: str | list[str] | None = None,
    dataset_tags: str | list[str] | None = None,
    dataset: str | list[str] | None = None,
    dataset_args: str | list[str] | None = None,
    eval_split: str | None = None,
    student: Any = None,
    output_dir: str | os.PathLike | None = None,
    teacher_name: str | None = None,
) -> ModelCard | None:
    """
    Write the distillation model card of `trainer`'s student to `trainer.args.output_dir/README.md`, atomically.

    `student`, `output_dir` and `teacher_name` default to the trainer's model, output directory and teacher; a trainer
    of several models (mutual learning's peers) writes one card per model by giving them.

    `repo_id` is the id the card's snippet loads; default: the repository `push_to_hub` created (`trainer.hub_model_id`,
    namespace included), else the student's local directory. `report` defaults to the output directory's report; its
    plot is copied next to the card so that an upload carries it. `license` defaults to hf_kd's, Apache-2.0. The other
    arguments are those of [`~transformers.Trainer.create_model_card`]. Returns the card (`None` off the main process).
    """
    if not trainer.is_world_process_zero():
        return None
    args, output_dir = trainer.args, Path(output_dir if output_dir is not None else trainer.args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report, report_dir = _read_report(report, output_dir)
    plot = _copy_plot(report, report_dir, output_dir)
    student = trainer.accelerator.unwrap_model(trainer.model if student is None else student)
    teacher = getattr(trainer, "teacher_model", None)
    teacher = trainer.accelerator.unwrap_model(teacher) if teacher is not None else None
    # In a teacher-assistant chain the trainer's teacher is the last assistant: the table gives it its own column, and
    # the teacher's architecture and size come from the teacher's saved directory and row of the report.
    assistants, teacher_architecture = _chain_columns(report, report_dir, teacher), None
    if assistants:
        entry = _teacher_entry(report)
        teacher_architecture = _saved_architecture(report_dir / entry.path if entry and report_dir else None)
    # The student's own starting checkpoint, if it came from the Hub (never the teacher: see the module docstring).
    base_model = finetuned_from
    if base_model is None and _is_hub_id(getattr(getattr(student, "config", None), "_name_or_path", "")):
        base_model = student.config._name_or_path
    teacher_name = teacher_name or (report.teacher if report else None) or args.teacher_model_name_or_path
    if not teacher_name and teacher is not None:
        teacher_name = getattr(getattr(teacher, "config", None), "_name_or_path", None) or None
    settings = report.settings if report is not None else _trainer_settings(trainer, teacher)
    datasets = _hub_datasets(report, dataset_tags, dataset)
    card_data = ModelCardData(
        model_name=model_name or (args.hub_model_id or output_dir.name).split("/")[-1],
        library_name="transformers",
        pipeline_tag=(_as_list(tasks) or [None])[0] or (report.task if report else None) or _task_of(student),
        tags=_unique(DEFAULT_TAGS + _as_list(tags) + list(getattr(trainer, "_tag_names", []) or [])),
        datasets=datasets or None, base_model=base_model, base_model_relation="finetune" if base_model else None,
        license=license or DEFAULT_LICENSE, language=language,
        distillation={"teacher": report.teacher, **report.lineage} if report and report.lineage else None,
    )  # fmt: skip
    card = model_card(
        card_data, repo_id=repo_id or trainer.hub_model_id or str(args.output_dir), student=student,
        settings=settings, report=report, teacher=None if assistants else teacher, teacher_name=teacher_name,
        teacher_architecture=teacher_architecture, assistants=assistants,
        dataset_name=(_as_list(dataset) or datasets or [report.dataset if report else None])[0],
        eval_metrics=final_eval_metrics(trainer.state.log_history), eval_split=eval_split, plot=plot,
    )  # fmt: skip
    # Not `card.save(path)`: huggingface_hub's `RepoCard.save` opens the file with mode "w" (truncating it first), so
    # a crash mid-write leaves a half card that the next upload would publish; `atomic_write` never does.
    atomic_write(output_dir / MODEL_CARD_NAME, str(card))
    return card
