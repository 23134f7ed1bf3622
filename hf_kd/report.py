"""The teacher-vs-student report: how much smaller and faster the student is, and what it costs in accuracy.

[`measure_model`] times and scores one model on the test split; [`DistillationReport`] gathers the teacher, the
CE-only baseline and the distilled student, and writes `distillation_report.md` / `.json` (and a PNG plot when
matplotlib is installed) into the run's output directory. The JSON schema is shared with the text examples:

```
{"dataset", "task", "teacher", "metric",
 "settings": {"temperature", "alpha", "loss_type", "teacher_logits", "num_train_epochs", "learning_rate", "seed",
              "per_device_train_batch_size"},
 "models": [{"name", "label", "path", "parameters", "size_mb", "train_time_s", "eval_time_s", "latency_ms",
             "accuracy", "agreement_with_teacher"}, ...],
 "plot"}
```
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .data import collate_batches
from .teacher import TEACHER_INPUT_PREFIX, TEACHER_LOGITS_COLUMN, logits_of

REPORT_JSON = "distillation_report.json"
REPORT_MD = "distillation_report.md"
REPORT_PNG = "distillation_report.png"

MODEL_LABELS = {"teacher": "Teacher", "student_ce": "Student (CE only)", "student_kd": "Student (KD)"}
SETTINGS_KEYS = (
    "temperature",
    "alpha",
    "loss_type",
    "teacher_logits",
    "num_train_epochs",
    "learning_rate",
    "seed",
    "per_device_train_batch_size",
)
# Recorded when known: the number of processes that trained (data parallel).
OPTIONAL_SETTINGS_KEYS = ("world_size",)


@dataclass
class ModelResult:
    """One row of the report. `accuracy` and `agreement_with_teacher` are fractions in [0, 1]."""

    name: str
    label: str
    path: str
    parameters: int
    size_mb: float
    train_time_s: float | None
    eval_time_s: float
    latency_ms: float
    accuracy: float
    agreement_with_teacher: float


# ---------------------------------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------------------------------


def count_parameters(model: nn.Module) -> int:
    """All parameters, trainable or not (the teacher is frozen but its size is the point)."""
    return sum(p.numel() for p in model.parameters())


def directory_size_mb(path: str | os.PathLike) -> float:
    """Size on disk of a saved model directory (weights, config, processor), in MB (10**6 bytes). The Trainer's
    `checkpoint-*` folders are left out: they hold optimizer states of the run, not the model that ships."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory: save the model with save_pretrained first.")
    return sum(
        f.stat().st_size
        for f in path.rglob("*")
        if f.is_file() and not any(part.startswith(f"{PREFIX_CHECKPOINT_DIR}-") for part in f.relative_to(path).parts)
    ) / 1e6


def model_inputs(batch: Mapping[str, Any], input_prefix: str = "") -> dict[str, Any]:
    """One model's inputs from a collated batch: the keys starting with `input_prefix` (prefix removed), e.g.
    `"teacher_"` for a teacher's own tokenization; without a prefix, every key but the labels and the teacher's."""
    if input_prefix:
        return {
            k[len(input_prefix) :]: v
            for k, v in batch.items()
            if k.startswith(input_prefix) and k != TEACHER_LOGITS_COLUMN
        }
    return {
        k: v
        for k, v in batch.items()
        if k not in ("labels", TEACHER_LOGITS_COLUMN) and not k.startswith(TEACHER_INPUT_PREFIX)
    }


def _batches(dataset, batch_size: int, data_collator: Callable | None) -> DataLoader:
    """The dataset in order, collated as a training loop would: an [`~hf_kd.data.InMemoryDataset`] hands whole
    batches to [`~hf_kd.data.collate_batches`] (the default), a [`~datasets.Dataset`] hands rows to the collator
    (a padding one for text)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=data_collator or collate_batches)


def _on(device: torch.device, inputs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}


def dataset_labels(dataset) -> np.ndarray:
    """The `labels` column of a [`~datasets.Dataset`] or an [`~hf_kd.data.InMemoryDataset`], as an array."""
    columns = getattr(dataset, "columns", None)  # hf_kd.data.InMemoryDataset
    if isinstance(columns, dict):
        return columns["labels"].numpy()
    return np.asarray(dataset.with_format("numpy", columns=["labels"])[:]["labels"])


@torch.inference_mode()
def predict(
    model: nn.Module,
    dataset,
    batch_size: int = 256,
    data_collator: Callable | None = None,
    input_prefix: str = "",
) -> tuple[np.ndarray, float]:
    """Class predictions over `dataset` and the wall time in seconds of the whole pass, collation included (eval
    mode, no gradients). `data_collator` and `input_prefix` as in [`measure_model`]."""
    model.eval()
    device = next(model.parameters()).device
    predictions = []
    start = time.perf_counter()
    for batch in _batches(dataset, batch_size, data_collator):
        predictions.append(logits_of(model(**_on(device, model_inputs(batch, input_prefix)))).argmax(-1).cpu())
    elapsed = time.perf_counter() - start
    return torch.cat(predictions).numpy(), elapsed


@torch.inference_mode()
def latency_ms(
    model: nn.Module,
    dataset,
    num_examples: int = 200,
    warmup: int = 10,
    data_collator: Callable | None = None,
    input_prefix: str = "",
) -> float:
    """Median time of one forward pass on one example (batch size 1, unpadded), in milliseconds: what a single
    request waits. The examples are collated and moved to the device before the clock starts."""
    model.eval()
    device = next(model.parameters()).device
    examples = []
    for batch in _batches(dataset, 1, data_collator):
        if len(examples) == num_examples + warmup:
            break
        examples.append(_on(device, model_inputs(batch, input_prefix)))
    times = []
    for i, example in enumerate(examples):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model(**example)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup or len(examples) <= warmup:
            times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def measure_model(
    name: str,
    model: nn.Module,
    dataset,
    compute_accuracy: Callable[[np.ndarray, np.ndarray], float],
    saved_path: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    train_time_s: float | None = None,
    teacher_predictions: np.ndarray | None = None,
    batch_size: int = 256,
    latency_examples: int = 200,
    data_collator: Callable | None = None,
    input_prefix: str = "",
) -> tuple[ModelResult, np.ndarray]:
    """
    Score and time one model on the test split.

    Args:
        name (`str`): `"teacher"`, `"student_ce"` or `"student_kd"` (any other name is its own label).
        model (`nn.Module`): The model, in its final state.
        dataset: The test split with the model's inputs and `labels` (a [`~datasets.Dataset`] or an
            [`~hf_kd.data.InMemoryDataset`]).
        compute_accuracy (`Callable`): `(predictions, references) -> accuracy in [0, 1]`, e.g. an `evaluate` metric.
        saved_path: The directory the model was saved to (its size on disk is measured).
        output_dir: Where the report is written; the saved path is recorded relative to it.
        train_time_s (`float`, *optional*): The training time, `None` when the model was loaded, not trained.
        teacher_predictions (`np.ndarray`, *optional*): The teacher's predictions, for `agreement_with_teacher`;
            `None` for the teacher itself (agreement 1).
        data_collator (`Callable`, *optional*): Builds a batch from the dataset's rows, e.g. a padding collator for
            tokenized text. Default: [`~hf_kd.data.collate_batches`] (stacks rows; passes an in-memory batch through).
        input_prefix (`str`, *optional*): Feed the model the batch keys with this prefix (stripped), e.g.
            `"teacher_"` to score a teacher on its own tokenization; default: every key but labels and `teacher_*`.

    Returns:
        The [`ModelResult`] and the model's predictions (pass the teacher's to the students).
    """
    references = dataset_labels(dataset)
    predictions, eval_time = predict(model, dataset, batch_size, data_collator, input_prefix)
    latency = latency_ms(model, dataset, latency_examples, data_collator=data_collator, input_prefix=input_prefix)
    agreement = 1.0 if teacher_predictions is None else float(np.mean(predictions == teacher_predictions))
    path = Path(saved_path)
    shown_path = os.path.relpath(path, output_dir) if output_dir is not None else str(path)
    result = ModelResult(
        name=name,
        label=MODEL_LABELS.get(name, name),
        path=shown_path,
        parameters=count_parameters(model),
        size_mb=round(directory_size_mb(path), 4),
        train_time_s=None if train_time_s is None else round(float(train_time_s), 2),
        eval_time_s=round(eval_time, 4),
        latency_ms=round(latency, 4),
        accuracy=float(compute_accuracy(predictions, references)),
        agreement_with_teacher=agreement,
    )
    return result, predictions


# ---------------------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory and `os.replace`: readers see the old
    file or the new one, never a half-written one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclass
class DistillationReport:
    """
    The results of a run: one [`ModelResult`] per model, and what was distilled how.

    Args:
        dataset (`str`): The dataset's name or path.
        task (`str`): `"image-classification"` or `"text-classification"`.
        teacher (`str`): Where the teacher came from (name or path), or `"trained here"`.
        settings (`dict`): The distillation settings, the keys of [`SETTINGS_KEYS`].
        models (`list[ModelResult]`): Teacher first, then the students.
        metric (`str`): The metric's name.
    """

    dataset: str
    task: str
    teacher: str
    settings: dict[str, Any]
    models: list[ModelResult] = field(default_factory=list)
    metric: str = "accuracy"
    plot: str | None = None

    def __post_init__(self):
        if self.task not in ("image-classification", "text-classification"):
            raise ValueError(f"task must be 'image-classification' or 'text-classification', got {self.task!r}.")
        missing = [key for key in SETTINGS_KEYS if key not in self.settings]
        if missing:
            raise ValueError(f"settings is missing {missing}; it needs {list(SETTINGS_KEYS)}.")

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "task": self.task,
            "teacher": self.teacher,
            "metric": self.metric,
            "settings": {
                key: self.settings[key] for key in SETTINGS_KEYS + OPTIONAL_SETTINGS_KEYS if key in self.settings
            },
            "models": [asdict(model) for model in self.models],
            "plot": self.plot,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillationReport:
        return cls(
            dataset=data["dataset"],
            task=data["task"],
            teacher=data["teacher"],
            settings=data["settings"],
            models=[ModelResult(**model) for model in data["models"]],
            metric=data.get("metric", "accuracy"),
            plot=data.get("plot"),
        )

    @classmethod
    def load(cls, output_dir: str | os.PathLike) -> DistillationReport:
        """Read the `distillation_report.json` of a finished run."""
        with open(Path(output_dir) / REPORT_JSON, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_markdown(self) -> str:
        settings = self.settings
        teacher = next((m for m in self.models if m.name == "teacher"), None)
        lines = [
            "# Distillation report",
            "",
            f"Dataset: `{self.dataset}` ({self.task}). Teacher: {self.teacher}. Metric: {self.metric} on the test "
            "split.",
            f"Distillation: T={settings['temperature']}, alpha={settings['alpha']}, loss={settings['loss_type']}, "
            f"teacher logits {settings['teacher_logits']}; {settings['num_train_epochs']} epochs, "
            f"lr {settings['learning_rate']}, batch {settings['per_device_train_batch_size']}, "
            f"seed {settings['seed']}.",
            "",
            "| model | parameters | size (MB) | train time (s) | test-set inference (s) | latency, batch 1 (ms) "
            f"| {self.metric} | agreement with teacher |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for m in self.models:
            train = "-" if m.train_time_s is None else f"{m.train_time_s:.1f}"
            lines.append(
                f"| {m.label} | {m.parameters:,} | {m.size_mb:.2f} | {train} | {m.eval_time_s:.3f} | "
                f"{m.latency_ms:.3f} | {100 * m.accuracy:.2f}% | {100 * m.agreement_with_teacher:.2f}% |"
            )
        kd = next((m for m in self.models if m.name == "student_kd"), None)
        ce = next((m for m in self.models if m.name == "student_ce"), None)
        if kd is not None and teacher is not None:
            lines += [
                "",
                f"The distilled student has {teacher.parameters / kd.parameters:.1f}x fewer parameters than the "
                f"teacher, answers {teacher.latency_ms / kd.latency_ms:.1f}x faster at batch 1, and keeps "
                f"{100 * kd.accuracy / teacher.accuracy:.1f}% of its {self.metric}.",
            ]
            if ce is not None:
                gain = 100 * (kd.accuracy - ce.accuracy)
                lines.append(
                    f"Distillation {'gained' if gain >= 0 else 'lost'} {abs(gain):.2f} points over the same student "
                    "trained on the labels alone (same seed and epochs)."
                )
        if self.plot:
            lines += ["", f"![accuracy vs size and latency]({self.plot})"]
        return "\n".join(lines) + "\n"

    def plot_to(self, path: str | os.PathLike) -> bool:
        """Accuracy against parameters and against latency, one point per model. False when matplotlib is missing."""
        try:
            import matplotlib

            matplotlib.use("Agg")  # no display needed; also safe in worker threads
            import matplotlib.pyplot as plt
        except ImportError:
            return False
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
        for ax, attribute, xlabel in (
            (axes[0], "parameters", "parameters"),
            (axes[1], "latency_ms", "latency at batch 1 (ms)"),
        ):
            for model in self.models:
                x, y = getattr(model, attribute), 100 * model.accuracy
                ax.scatter(x, y, s=60)
                ax.annotate(model.label, (x, y), textcoords="offset points", xytext=(6, 4))
            ax.set_xscale("log")
            ax.margins(x=0.3, y=0.15)  # room for the labels
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{self.metric} (%)")
            ax.grid(True, alpha=0.3)
        fig.suptitle(f"{self.dataset}: teacher vs students")
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
        os.close(fd)
        try:
            fig.savefig(tmp, dpi=100)
            os.replace(tmp, path)
        finally:
            plt.close(fig)
            if os.path.exists(tmp):
                os.unlink(tmp)
        return True

    def save(self, output_dir: str | os.PathLike, plot: bool = True) -> Path:
        """Write the plot (when asked and matplotlib is installed), then the Markdown and JSON reports, each
        atomically. The JSON goes last: its presence marks a finished run. Returns the JSON's path."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        self.plot = REPORT_PNG if plot and self.plot_to(output_dir / REPORT_PNG) else None
        _atomic_write(output_dir / REPORT_MD, self.to_markdown().encode("utf-8"))
        _atomic_write(output_dir / REPORT_JSON, (json.dumps(self.to_dict(), indent=2) + "\n").encode("utf-8"))
        return output_dir / REPORT_JSON


def has_finished_report(output_dir: str | os.PathLike) -> bool:
    """True when `output_dir` holds the report of a finished run."""
    return (Path(output_dir) / REPORT_JSON).is_file()
