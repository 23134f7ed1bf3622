"""The teacher-vs-student report: how much smaller and faster the student is, and what it costs in accuracy.

[`measure_model`] times and scores one model on the test split; [`DistillationReport`] gathers the teacher, the
CE-only baseline and the distilled student, and is the one reader and writer of `distillation_report.md` / `.json`
(and of the PNG plot when matplotlib is installed) in the run's output directory; the model card renders from it.
The JSON schema is shared with the text examples (keys marked `?` are optional: absent from older reports):

```
{"dataset", "task", "teacher", "metric",
 "settings": {"temperature", "alpha", "loss_type", "teacher_logits", "num_train_epochs", "learning_rate", "seed",
              "per_device_train_batch_size", "world_size"?, "max_steps"?, "mixed_precision"?, "teacher_dtype"?},
 "models": [{"name", "label", "path", "parameters", "size_mb", "train_time_s", "eval_time_s", "latency_ms",
             "accuracy", "agreement_with_teacher", "latency_ms_iqr"?}, ...],
 "plot", "num_test_examples"?, "majority_class_accuracy"?, "teacher_recipe"?, "training_curves"?,
 "black_box"?: {"teacher_url", "answers", "top_k", "labeled_examples", "teacher_answered_examples", "transfer_examples",
                "transfer_dataset", "queries", "queries_by_split", "answers_reused_from_disk", "teacher_test_accuracy"}}
```
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import nn
from transformers.utils import logging

from ..utils import atomic_write
from .measure import LATENCY_PASSES, LATENCY_WARMUP, ModelResult, model_label
from .plot import plot_report

logger = logging.get_logger(__name__)

REPORT_JSON = "distillation_report.json"
REPORT_MD = "distillation_report.md"
REPORT_PNG = "distillation_report.png"

# Every setting a run records, with the words the card and the report use for it. The first eight are required; the
# others are recorded when known. [`run_settings`] reads them from the training arguments.
SETTING_LABELS = {
    "temperature": "Temperature `T`",
    "alpha": "`alpha` (weight of the teacher's term)",
    "loss_type": "Soft-target loss",
    "teacher_logits": "Teacher logits",
    "num_train_epochs": "Epochs",
    "learning_rate": "Learning rate",
    "seed": "Seed",
    "per_device_train_batch_size": "Batch size (per device)",
    "max_steps": "Training steps",
    "world_size": "Processes (data parallel)",
    "mixed_precision": "Mixed precision",
    "teacher_dtype": "Teacher weights dtype",
    "feature_pairs": "Feature pairs (student:teacher; connectors trained, then discarded)",
    "feature_loss": "Feature loss",
    "feature_weight": "Feature loss weight",
    "feature_connector": "Feature connector",
}
SETTINGS_KEYS = tuple(SETTING_LABELS)[:8]
OPTIONAL_SETTINGS_KEYS = tuple(SETTING_LABELS)[8:]
# Differences within this many standard errors are the test set's noise.
NOISE_Z = 2.0


def schedule_key(settings: dict) -> str:
    """The setting that said how long the students trained: `max_steps` when it is set, since it wins over
    `num_train_epochs` in the Trainer; the epochs otherwise (both are recorded: the schema needs the epochs)."""
    return "max_steps" if (settings.get("max_steps") or 0) > 0 else "num_train_epochs"


def run_settings(args: Any, *, teacher_logits: str, world_size: int | None = None, teacher: nn.Module | None = None):
    """
    The `settings` of a run's report and card, the one place they are built.

    Args:
        args ([`DistillationConfig`]): The distilled student's training arguments.
        teacher_logits (`str`): `"live"` (the teacher ran on every batch) or `"precomputed"` (once, up front).
        world_size (`int`, *optional*): The number of training processes; default `args.world_size`.
        teacher (`nn.Module`, *optional*): The teacher, for its weights' dtype when `args.teacher_dtype` is unset.
    """
    settings = {key: getattr(args, key) for key in SETTING_LABELS if getattr(args, key, None) is not None}
    if settings.get("max_steps", -1) <= 0:  # the Trainer's "no limit": the epochs count
        settings.pop("max_steps", None)
    settings["teacher_logits"] = teacher_logits
    if not getattr(args, "feature_pairs", None):  # the feature settings mean nothing without pairs
        for key in ("feature_pairs", "feature_loss", "feature_weight", "feature_connector"):
            settings.pop(key, None)
    settings["mixed_precision"] = "bf16" if getattr(args, "bf16", False) else "fp16" if args.fp16 else "no"
    if world_size is not None:
        settings["world_size"] = int(world_size)
    if "teacher_dtype" not in settings and teacher is not None:
        settings["teacher_dtype"] = str(next(teacher.parameters()).dtype).removeprefix("torch.")
    return {key: settings[key] for key in SETTING_LABELS if key in settings}


def teacher_recipe(args: Any, **augmentation: Any) -> dict[str, Any]:
    """How a teacher trained in the run was trained, for the report and the card: its training arguments' epochs,
    learning rate, batch size and seed, plain cross-entropy, and the `augmentation` (e.g. `max_shift=1`)."""
    keys = ("num_train_epochs", "learning_rate", "per_device_train_batch_size", "seed")
    return {**{key: getattr(args, key) for key in keys}, "loss": "cross-entropy", **augmentation}


def lineage_of(names: list[str], args: Any = None) -> dict[str, Any] | None:
    """Who taught the last of a run's models (`names` in training order): `{"teachers", "assistants", "student"}`
    from an ensemble's teachers (`teacher_<k>`) and a chain's assistants (`assistant_<k>`), with the ensemble's
    method and weights from `args`. `None` for one teacher and no assistant: the report's table says it all."""
    teachers = [name for name in names if name == "teacher" or name.startswith("teacher_")]
    assistants = [name for name in names if name.startswith("assistant_")]
    if len(teachers) < 2 and not assistants:
        return None
    lineage = {"teachers": teachers, "assistants": assistants, "student": names[-1]}
    if len(teachers) > 1:
        lineage["ensemble_method"] = getattr(args, "ensemble_method", "mean_probs")
        lineage["teacher_weights"] = getattr(args, "teacher_weights", None)
    return lineage


def training_curve(log_history: list[dict[str, Any]]) -> dict[str, list[float]]:
    """The training losses of a `trainer.state.log_history`, per logged step: `{"step": [...], "loss": [...]}` and
    the parts a [`DistillationTrainer`] logs (`loss_ce`, `loss_kd`). Evaluation entries are left out."""
    entries = [e for e in log_history if "loss" in e and "step" in e and not any(k.startswith("eval_") for k in e)]
    keys = sorted({k for e in entries for k in e if k == "loss" or k.startswith("loss_")})
    return {"step": [e["step"] for e in entries], **{k: [e.get(k, math.nan) for e in entries] for k in keys}}


# ---------------------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------------------


def difference_standard_error(a: float, b: float, n: int) -> float:
    """Standard error of `a - b`, two accuracies measured on the same `n` test examples, each taken as a binomial
    proportion and the two as independent: `sqrt(a(1-a)/n + b(1-b)/n)`. Models that err on the same examples have a
    smaller true error, so this is on the cautious side."""
    return math.sqrt((a * (1 - a) + b * (1 - b)) / n)


def _cell(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and math.isfinite(value) else "–"


@dataclass
class DistillationReport:
    """
    The results of a run: one [`ModelResult`] per model, and what was distilled how.

    Args:
        dataset (`str`): The dataset's name or path.
        task (`str`): `"image-classification"` or `"text-classification"`.
        teacher (`str`): Where the teacher came from (name or path), or `"trained here"`.
        settings (`dict`): The distillation settings, from [`run_settings`] (the keys of [`SETTINGS_KEYS`], and
            those of [`OPTIONAL_SETTINGS_KEYS`] when known).
        models (`list[ModelResult]`): Teacher first, then the students.
        metric (`str`): The metric's name.
        num_test_examples, majority_class_accuracy (*optional*): From [`label_statistics`] of the test labels: the
            report then says when the teacher is no better than always answering the most frequent class, and when
            distillation lost to the baseline by more than the test set's noise.
        teacher_recipe (`dict`, *optional*): How the run trained its teacher, from [`teacher_recipe`].
        training_curves (`dict`, *optional*): Model name -> [`training_curve`] of its trainer's log history.
        lineage (`dict`, *optional*): Who taught the distilled student, from [`lineage_of`]: an ensemble's teachers
            and a chain's assistants.
        black_box (`dict`, *optional*): A black-box run's teacher URL and answers, the examples each student saw
            (`labeled_examples`, ...), the `queries` made (and `queries_by_split`), `teacher_test_accuracy`.
    """

    dataset: str
    task: str
    teacher: str
    settings: dict[str, Any]
    models: list[ModelResult] = field(default_factory=list)
    metric: str = "accuracy"
    plot: str | None = None
    num_test_examples: int | None = None
    majority_class_accuracy: float | None = None
    teacher_recipe: dict[str, Any] | None = None
    training_curves: dict[str, dict[str, list[float]]] | None = None
    lineage: dict[str, Any] | None = None
    black_box: dict[str, Any] | None = None

    def __post_init__(self):
        if self.task not in ("image-classification", "text-classification"):
            raise ValueError(f"task must be 'image-classification' or 'text-classification', got {self.task!r}.")
        missing = [key for key in SETTINGS_KEYS if key not in self.settings]
        if missing:
            raise ValueError(f"settings is missing {missing}; it needs {list(SETTINGS_KEYS)}.")

    def model(self, name: str) -> ModelResult | None:
        """The result of the model called `name` (`"teacher"`, `"student_ce"`, `"student_kd"`), if there is one."""
        return next((m for m in self.models if m.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["settings"] = {k: self.settings[k] for k in SETTINGS_KEYS + OPTIONAL_SETTINGS_KEYS if k in self.settings}
        data["models"] = [asdict(model) for model in self.models]
        optional = ("num_test_examples", "majority_class_accuracy", "teacher_recipe", "training_curves", "lineage",
                    "black_box")  # fmt: skip
        return {key: value for key, value in data.items() if value is not None or key not in optional}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillationReport:
        known = {f.name for f in fields(cls)}
        data = {key: value for key, value in data.items() if key in known}
        return cls(**{**data, "models": [ModelResult(**model) for model in data["models"]]})

    @classmethod
    def load(cls, path: str | os.PathLike) -> DistillationReport:
        """Read a finished run's report: its `distillation_report.json`, or the directory holding it."""
        path = Path(path)
        if path.is_dir():
            path = path / REPORT_JSON
        if not path.is_file():
            raise FileNotFoundError(f"no distillation report at {path} (expected a {REPORT_JSON} file).")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}).") from err
        if not isinstance(data, dict) or not isinstance(data.get("models"), list):
            raise ValueError(f"{path} is not a distillation report (expected a JSON object with a 'models' list).")
        return cls.from_dict(data)

    def results_table(self, highlight: str | None = None) -> str:
        """The models as a Markdown table; the row of the model named `highlight` is marked "(this model)".
        (`transformers.modelcard.make_markdown_table` is not used: it pads every cell to its column's width and
        centres the numbers.)"""
        metric = self.metric.replace("_", " ").capitalize()
        lines = [
            (
                f"| Model | Parameters | Size (MB) | {metric} | Agreement with teacher | Latency, batch 1 (ms) "
                "| Training time (s) | Test-set inference (s) |"
            ),
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for m in self.models:
            label = f"**{m.label}** (this model)" if m.name == highlight else m.label
            latency = _cell(m.latency_ms, ".3f") + (f" ± {m.latency_ms_iqr:.3f}" if m.latency_ms_iqr else "")
            lines.append(
                f"| {label} | {_cell(m.parameters, ',')} | {_cell(m.size_mb, '.3f')} | {_cell(100 * m.accuracy, '.2f')}%"
                f" | {_cell(100 * m.agreement_with_teacher, '.2f')}% | {latency} | {_cell(m.train_time_s, '.1f')} "
                f"| {_cell(m.eval_time_s, '.3f')} |"
            )
        return "\n".join(lines)

    def lineage_text(self) -> str | None:
        """The distilled student's lineage in words (each model with its size and score), when it had several
        teachers or assistants."""
        if not self.lineage:
            return None

        def described(name: str) -> str:
            result = self.model(name)
            score = f", {self.metric} {100 * result.accuracy:.2f}%" if result else ""
            return f"{model_label(name)}" + (f" ({result.parameters:,} parameters{score})" if result else "")

        teachers, assistants = self.lineage["teachers"], self.lineage["assistants"]
        source = ", ".join(described(name) for name in teachers)
        if len(teachers) > 1:
            source = f"an ensemble of {len(teachers)} teachers ({source}; `{self.lineage['ensemble_method']}`)"
        text = "Lineage: " + " → ".join([source, *(described(name) for name in assistants), "this model"]) + "."
        if assistants:
            text += (" Each assistant was distilled from the model before it and taught the next (teacher "
                     "assistants, Mirzadeh et al., 2020).")  # fmt: skip
        return text

    def schedule_text(self) -> str:
        """How long the students trained: the steps or the epochs, as [`schedule_key`] says."""
        if schedule_key(self.settings) == "max_steps":
            return f"{self.settings['max_steps']:,} steps"
        return f"{self.settings['num_train_epochs']} epochs"

    def recipe_text(self) -> str | None:
        """How the teacher was trained, in one line, when the run trained it."""
        if not self.teacher_recipe:
            return None
        words = {"max_shift": "random translation (max pixels)", "loss": "loss"}
        parts = [f"{SETTING_LABELS.get(k, words.get(k, k)).lower()}: {v}" for k, v in self.teacher_recipe.items()]
        return "The teacher was trained in this run: " + ", ".join(parts) + "."

    @staticmethod
    def latency_method() -> str:
        """How the batch-1 latency was measured, in words."""
        return (
            f"Latency: one example at a time, after {LATENCY_WARMUP} warm-up calls; the models timed in turn over "
            f"{LATENCY_PASSES} passes, each model's fastest pass's median, ± the interquartile range of its single "
            "calls. Timings depend on the machine and its load: compare models within one report."
        )

    def black_box_text(self) -> str:
        b = self.black_box
        kept = {"probs": "probabilities", "label": "its label only"}.get(b["answers"], f"its top {b.get('top_k')}")
        source = f", from `{b['transfer_dataset']}`" if b.get("transfer_dataset") else ""
        return (
            f"Black-box teacher at {b['teacher_url']}, answering with {kept}: "
            f"{b['teacher_test_accuracy'] * 100:.2f}% {self.metric} on the test split from its answers (the students' "
            f"agreement is with them). The baseline saw {b['labeled_examples']:,} labelled examples; the distilled "
            f"student {b['teacher_answered_examples']:,} answered by the teacher ({b['transfer_examples']:,} without a "
            f"label{source}). Queries this run: {b['queries']:,} ({b['answers_reused_from_disk']:,} answers reused)."
        )

    def notes(self) -> list[str]:
        """Warnings about the run's results: a teacher no better than the majority class, and distillation that
        lost to the baseline by more than the test set's noise ([`NOISE_Z`] binomial standard errors, see
        [`difference_standard_error`]). Only for the accuracy metric, and with `num_test_examples` known."""
        teacher, kd, ce = self.model("teacher"), self.model("student_kd"), self.model("student_ce")
        n = self.num_test_examples
        if self.metric != "accuracy" or not n:
            return []
        notes, majority = [], self.majority_class_accuracy
        if teacher is not None and majority is not None:
            noise = NOISE_Z * difference_standard_error(teacher.accuracy, majority, n)
            if teacher.accuracy - majority <= noise:
                notes.append(
                    f"Warning: the teacher ({100 * teacher.accuracy:.2f}%) is no better than always answering the most "
                    f"frequent class ({100 * majority:.2f}%) beyond the test set's noise ({100 * noise:.2f} points): "
                    "it has little to teach; train it longer or choose another one."
                )
        if kd is not None and ce is not None:
            noise = NOISE_Z * difference_standard_error(kd.accuracy, ce.accuracy, n)
            if ce.accuracy - kd.accuracy > noise:
                notes.append(
                    f"Warning: distillation lost to the baseline by {100 * (ce.accuracy - kd.accuracy):.2f} points, "
                    f"more than the test set's noise ({100 * noise:.2f} points, {NOISE_Z:g} standard errors)."
                )
        return notes

    def to_markdown(self) -> str:
        s = self.settings
        lines = [
            "# Distillation report",
            "",
            f"Dataset: `{self.dataset}` ({self.task}). Teacher: {self.teacher}. Metric: {self.metric} on the test split"
            + (f" ({self.num_test_examples:,} examples)." if self.num_test_examples else "."),
            (
                f"Distillation (`hf_kd.losses.distillation_loss`): T={s['temperature']}, alpha={s['alpha']}, "
                f"loss={s['loss_type']}, teacher logits {s['teacher_logits']}; {self.schedule_text()}, "
                f"lr {s['learning_rate']}, batch {s['per_device_train_batch_size']}, seed {s['seed']}."
            ),
            *([self.recipe_text()] if self.teacher_recipe else []),
            *([self.lineage_text()] if self.lineage else []),
            *([self.black_box_text()] if self.black_box else []),
            "",
            self.results_table(),
            "",
            self.latency_method(),
        ]
        teacher, kd, ce = self.model("teacher"), self.model("student_kd"), self.model("student_ce")
        if kd is not None and teacher is not None:
            lines += [
                "",
                (
                    f"The distilled student has {teacher.parameters / kd.parameters:.1f}x fewer parameters than the "
                    f"teacher, answers {teacher.latency_ms / kd.latency_ms:.1f}x faster at batch 1, and keeps "
                    f"{100 * kd.accuracy / teacher.accuracy:.1f}% of its {self.metric}."
                ),
            ]
            if ce is not None:
                gain = 100 * (kd.accuracy - ce.accuracy)
                noise = ""
                if self.num_test_examples:
                    se = 100 * difference_standard_error(kd.accuracy, ce.accuracy, self.num_test_examples)
                    noise = f" One binomial standard error of this difference is {se:.2f} points."
                lines.append(
                    f"Distillation {'gained' if gain >= 0 else 'lost'} {abs(gain):.2f} points over the same student "
                    f"trained on the labels alone (same seed and epochs).{noise}"
                )
        if self.majority_class_accuracy is not None:
            lines.append(f"Always answering the most frequent class scores {100 * self.majority_class_accuracy:.2f}%.")
        lines += [line for note in self.notes() for line in ("", f"**{note}**")]
        if self.plot:
            lines += ["", f"![accuracy vs size and latency, and the training curves]({self.plot})"]
        return "\n".join(lines) + "\n"

    def save(self, output_dir: str | os.PathLike, plot: bool = True) -> Path:
        """Write the plot (when asked and matplotlib is installed), then the Markdown and JSON reports, each
        atomically. The JSON goes last: its presence marks a finished run. The [`notes`] are logged as warnings.
        Returns the JSON's path."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        self.plot = REPORT_PNG if plot and plot_report(self, output_dir / REPORT_PNG) else None
        for note in self.notes():
            logger.warning(note)
        atomic_write(output_dir / REPORT_MD, self.to_markdown())
        atomic_write(output_dir / REPORT_JSON, json.dumps(self.to_dict(), indent=2) + "\n")
        return output_dir / REPORT_JSON


def has_finished_report(output_dir: str | os.PathLike) -> bool:
    """True when `output_dir` holds the report of a finished run."""
    return (Path(output_dir) / REPORT_JSON).is_file()
