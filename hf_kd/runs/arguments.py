"""The examples' command-line arguments: which data, which models and what runs around the distillation.

The distillation itself (temperature, alpha, loss_type, the teacher to load) and the student's training are
[`DistillationConfig`] arguments; the dataclasses here hold the rest. [`parse_arguments`] reads all of them with
[`~transformers.HfArgumentParser`], with an example's defaults in place of the dataclasses' own.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, field, fields
from typing import Any

from transformers import HfArgumentParser, TrainingArguments

from ..data import DATA_PATHS
from ..models import PRESET_NAMES
from ..training.configuration_distillation import DistillationConfig
from .input_checks import check_architecture, check_model_source


@dataclass
class DataArguments:
    """Which data, and which of its columns and splits. Image columns are detected when not given."""

    dataset_name: str = field(
        default=None,
        metadata={
            "help": "The dataset: a Hub id (ylecun/mnist), a local directory load_dataset reads (imagefolder, "
            "parquet, ...) or a directory written by save_to_disk."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration."})
    train_split: str = field(default="train", metadata={"help": "The split to train on."})
    eval_split: str = field(default="test", metadata={"help": "The split every model is evaluated and reported on."})
    image_column: str | None = field(
        default=None, metadata={"help": "The image column (default: the column with the Image feature)."}
    )
    label_column: str | None = field(
        default=None, metadata={"help": "The label column (default: the column with the ClassLabel feature)."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on the first N training examples only (quick runs, tests)."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on the first N test examples only."})
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for the one-time image preprocessing (Dataset.map num_proc)."}
    )
    dataset_cache_dir: str | None = field(
        default=None, metadata={"help": "Where load_dataset caches (default: HF_DATASETS_CACHE)."}
    )
    transfer_dataset: str | None = field(
        default=None,
        metadata={
            "help": "Black box (--teacher_url): unlabeled images or texts the teacher answers, added to the training "
            "set as transfer examples (a Hub id, a local directory, or a save_to_disk directory; labels ignored)."
        },
    )
    transfer_split: str = field(default="train", metadata={"help": "The split of --transfer_dataset."})
    max_transfer_samples: int | None = field(
        default=None, metadata={"help": "Use the first N examples of --transfer_dataset only (a query budget)."}
    )
    max_labeled_samples: int | None = field(
        default=None,
        metadata={
            "help": "Black box (--teacher_url): keep the labels of the first N training examples only; the others "
            "are transfer examples, taught by the teacher's answers alone. The baseline trains on the N."
        },
    )
    data_path: str = field(
        default="auto",
        metadata={
            "help": "Images: 'memory' decodes every image once and holds the tensors (fastest, small sets); "
            "'on_the_fly' decodes and augments per batch in the DataLoader's workers (--dataloader_num_workers), "
            "memory flat in the size; 'auto' picks memory when the decoded tensors fit --in_memory_limit_gb. Logged.",
            "choices": list(DATA_PATHS),
        },
    )
    in_memory_limit_gb: float | None = field(default=None, metadata={"help": "--data_path auto: GiB held decoded at most (default: RAM/10)."})
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Stream the training split (datasets streaming=True; data on the fly), for a Hub dataset too big "
            "to download; the test split is downloaded. Set --max_steps, or --max_train_samples to count epochs."
        },
    )
    random_flip: bool = field(default=False, metadata={"help": "Images: random left-right flips, on the fly (teacher live)."})

    def __post_init__(self):
        if self.data_path not in DATA_PATHS:
            raise ValueError(f"data_path must be one of {', '.join(DATA_PATHS)}, got {self.data_path!r}.")
        if self.data_path == "memory" and (self.streaming or self.random_flip):
            raise ValueError("--streaming and --random_flip work on the fly: not with --data_path memory.")
        if self.in_memory_limit_gb is not None and self.in_memory_limit_gb < 0:
            raise ValueError(f"in_memory_limit_gb must be >= 0, got {self.in_memory_limit_gb}.")


@dataclass
class ExperimentArguments:
    """The models and the sequence around the distillation: teacher training, baseline, evaluation, report.

    The distillation itself (temperature, alpha, loss_type, teacher_model_name_or_path) and the student's training
    (epochs, learning rate, batch size, seed) are `DistillationConfig` arguments; the teacher and the CE-only
    baseline reuse the student's training settings unless overridden here.
    """

    teacher: str = field(
        default=None,
        metadata={
            "help": f"Architecture of the teacher trained here: a preset ({', '.join(PRESET_NAMES)}) or a directory "
            "holding a model config. Ignored when --teacher_model_name_or_path names a trained teacher to load."
        },
    )
    student: str = field(
        default=None,
        metadata={
            "help": "Architecture of the student: a preset or a directory holding a model config (and processor)."
        },
    )
    teacher_num_train_epochs: float | None = field(
        default=None, metadata={"help": "Epochs of the teacher's training (default: --num_train_epochs)."}
    )
    teacher_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the teacher's training (default: --learning_rate)."}
    )
    teacher_max_shift: int = field(
        default=0,
        metadata={
            "help": "Train the teacher on images translated by up to this many pixels at random (Hinton et al.'s "
            "jitter; 0 = off). Students see the original images."
        },
    )
    assistants: list[str] | None = field(
        default=None,
        metadata={
            "help": "Teacher assistants (Mirzadeh et al., 2020), space-separated presets or config directories, "
            "largest first: teacher -> assistant 1 -> ... -> student, each link distilled from the previous one; the "
            "student distilled directly from the teacher is trained too, for comparison."
        },
    )
    skip_baseline: bool = field(
        default=False,
        metadata={"help": "Do not train the CE-only student (the baseline that shows what distillation adds)."},
    )
    metric_name_or_path: str = field(
        default="accuracy",
        metadata={
            "help": "The evaluate metric: a Hub name or a local metric module directory (for machines without "
            "Hub access). 'accuracy' falls back to a built-in copy when the Hub cannot be reached."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Run even if output_dir holds a previous run: its contents are first moved aside to <output_dir>.previous-<time>."
        },
    )
    latency_examples: int = field(
        default=200, metadata={"help": "Test examples timed one at a time for the batch-1 latency."}
    )
    plot: bool = field(default=True, metadata={"help": "Draw distillation_report.png (needs matplotlib)."})
    torch_num_threads: int | None = field(
        default=None,
        metadata={
            "help": "CPU threads for torch's operations (default: torch's choice). Small models train faster on one: "
            "their matrices are too small to split, and on a busy machine threads wait on each other at every op."
        },
    )
    teacher_url: str | None = field(
        default=None,
        metadata={
            "help": "Black box: distil from the answers of a teacher served at this URL in the Hugging Face "
            "classification protocol (e.g. `python -m hf_kd.serve DIR`, an Inference Endpoint), asked once per "
            "example by a resumable annotation job; no teacher model is loaded or trained."
        },
    )
    teacher_answers: str = field(
        default="top_k",
        metadata={
            "help": "--teacher_url: what the teacher's answers keep: 'probs' (every class), 'top_k' (the best "
            "--teacher_top_k classes and scores) or 'label' (its best class only).",
            "choices": ["probs", "top_k", "label"],
        },
    )
    teacher_top_k: int = field(default=3, metadata={"help": "--teacher_answers top_k: how many classes (k)."})
    teacher_max_in_flight: int = field(
        default=4, metadata={"help": "--teacher_url: requests sent before the first answer comes back."}
    )
    teacher_request_batch_size: int = field(default=64, metadata={"help": "--teacher_url: examples per request."})
    distillation_mode: str = field(
        default="offline",
        metadata={
            "help": "offline: a teacher trained first (or loaded), then distilled. mutual: --peers trained together "
            "by deep mutual learning. born_again: --generations of the student's architecture, each distilled from "
            "the previous (generation 0: the CE-only baseline). ema: the student distilled from a moving average of "
            "itself (--ema_decay). data_free: the loaded teacher (--teacher_model_name_or_path) distilled without "
            "reading the training split, on synthetic inputs (--data_free_method). Images only.",
            "choices": ["offline", "mutual", "born_again", "ema", "data_free"],
        },
    )
    peers: str = field(
        default="student,student",
        metadata={
            "help": "--distillation_mode mutual: the peers' architectures, comma-separated ('teacher' and 'student' "
            "name --teacher and --student; or presets / config directories). Peer k is built with seed + k."
        },
    )
    generations: int = field(default=3, metadata={"help": "--distillation_mode born_again: how many generations."})
    ema_decay: float = field(
        default=0.99, metadata={"help": "--distillation_mode ema: the teacher's decay per optimizer step."}
    )
    data_free_method: str = field(
        default="dafl",
        metadata={
            "help": "--distillation_mode data_free: noise (Gaussian inputs, the baseline), dafl (Chen et al. 2019), "
            "dfad (Fang et al. 2019, adversarial) or statistics (Lopes et al. 2017: needs the activation statistics "
            "recorded beside the teacher).",
            "choices": ["noise", "dafl", "dfad", "statistics"],
        },
    )
    data_free_steps: int = field(
        default=3000, metadata={"help": "--distillation_mode data_free: training steps (one synthetic batch each)."}
    )
    data_free_batch_size: int = field(
        default=256, metadata={"help": "--distillation_mode data_free: synthetic examples per step and process."}
    )
    data_free_options: str | None = field(
        default=None,
        metadata={
            "help": "--distillation_mode data_free: other DataFreeConfig fields as a JSON object, e.g. "
            "'{\"generator_learning_rate\": 0.001, \"collapse_patience\": 100}'."
        },
    )

    def __post_init__(self):
        if not (isinstance(self.ema_decay, (int, float)) and math.isfinite(self.ema_decay) and 0 <= self.ema_decay < 1):
            raise ValueError(
                f"--ema_decay must be a number in [0, 1), got {self.ema_decay!r}: the weight the moving-average "
                "teacher keeps at each step (0.99: each step moves it 1% of the way to the student)."
            )
        if self.generations < 1:
            raise ValueError(f"--generations must be >= 1 (born-again generations to train), got {self.generations}.")
        peers = [name.strip() for name in self.peers.split(",")]
        if len(peers) < 2 or not all(peers):
            raise ValueError(
                f"--peers must name at least two comma-separated architectures ('teacher', 'student', presets or "
                f"config directories), got {self.peers!r}."
            )
        if self.latency_examples < 1:
            raise ValueError(f"--latency_examples must be >= 1, got {self.latency_examples}.")
        if self.torch_num_threads is not None and self.torch_num_threads < 1:
            raise ValueError(f"--torch_num_threads must be >= 1 (or left out), got {self.torch_num_threads}.")


@dataclass
class ImageExperimentArguments(ExperimentArguments):
    """[`ExperimentArguments`] of an image run, with a pretrained student as an alternative to `--student`."""

    student_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A pretrained image classifier as the student (Hub id or directory) with its image processor, its "
            "head resized to the dataset's classes. Instead of --student (an architecture trained from scratch)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.student and self.student_model_name_or_path:
            raise ValueError("Give --student or --student_model_name_or_path (a pretrained student), not both.")

    @property
    def student_source(self) -> str | None:
        """Where the student comes from: `--student_model_name_or_path` (pretrained) or `--student`."""
        return self.student_model_name_or_path or self.student


_GROUP_TITLES = {
    "DataArguments": "data (hf_kd)",
    "ExperimentArguments": "experiment (hf_kd): the models, and the trainings around the distillation",
    "ImageExperimentArguments": "experiment (hf_kd): the models, and the trainings around the distillation",
    "TextArguments": "text (hf_kd): columns, tokenization, student",
    "DistillationConfig": "distillation (hf_kd)",
}


def build_parser(dataclass_types: tuple) -> HfArgumentParser:
    """An `HfArgumentParser` whose `--help` shows one group per dataclass, hf_kd's first (data, experiment, text,
    then `DistillationConfig`'s own fields) and the ~150 inherited `TrainingArguments` last."""
    parser = HfArgumentParser(dataclass_types)
    trainer_fields = {f.name for f in fields(TrainingArguments)}
    group_of = {}
    for dtype in dataclass_types:
        for f in fields(dtype):
            inherited = issubclass(dtype, TrainingArguments) and f.name in trainer_fields
            group_of.setdefault(f.name, "training (transformers.TrainingArguments)" if inherited else dtype.__name__)
    titles = [_GROUP_TITLES.get(d.__name__, d.__name__) for d in dataclass_types]
    groups = {
        name: parser.add_argument_group(title) for name, title in zip([d.__name__ for d in dataclass_types], titles)
    }
    groups["training (transformers.TrainingArguments)"] = parser.add_argument_group(
        "training (transformers.TrainingArguments)"
    )
    for action in list(parser._optionals._group_actions):
        if action.dest in group_of:
            parser._optionals._group_actions.remove(action)
            groups[group_of[action.dest]]._group_actions.append(action)
        if action.option_strings and action.option_strings[0].startswith("--no_"):
            # HfArgumentParser gives the `--no_x` switch the help of `--x`, which then reads backwards.
            action.help = f"Turn off --{action.dest}."
            action.default = argparse.SUPPRESS  # the default belongs to --x; "(default: False)" here misleads
    # argparse's usage line would list all ~150 options before the groups: point to them instead.
    parser.usage = "%(prog)s [--argument value ...]  or  %(prog)s args.json|args.yaml   (--help: hf_kd's first)"
    return parser


def parse_arguments(dataclass_types: tuple, defaults: dict[str, Any] | None = None, argv: list[str] | None = None):
    """Parse `argv` (default: `sys.argv[1:]`) into one instance of each of `dataclass_types`, with `defaults` (any
    argument of any of them) replacing the dataclasses' own. A single `.json` / `.yaml` argument is read as a file."""
    parser = build_parser(dataclass_types)
    if defaults:
        unknown = sorted(set(defaults) - {action.dest for action in parser._actions})
        if unknown:
            raise ValueError(f"Unknown argument names in the example's defaults: {unknown}.")
        parser.set_defaults(**defaults)
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(os.path.abspath(argv[0]))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(args=argv)


def parse_image_arguments(
    defaults: dict[str, Any] | None = None, argv: list[str] | None = None
) -> tuple[DataArguments, ImageExperimentArguments, DistillationConfig]:
    """The image examples' arguments: `(DataArguments, ImageExperimentArguments, DistillationConfig)`."""
    data_args, experiment_args, config = parse_arguments(
        (DataArguments, ImageExperimentArguments, DistillationConfig), defaults, argv
    )
    if not data_args.dataset_name:
        raise ValueError("--dataset_name is required.")
    if not experiment_args.student_source:
        raise ValueError("--student (an architecture) or --student_model_name_or_path (a pretrained student) is required.")
    check_black_box_arguments(data_args, experiment_args)
    needs_teacher = (experiment_args.distillation_mode == "offline" and not experiment_args.teacher_url) or (
        experiment_args.distillation_mode == "mutual" and "teacher" in experiment_args.peers.split(",")
    )
    if experiment_args.distillation_mode == "data_free" and not config.teacher_model_name_or_path:
        raise ValueError(
            "--distillation_mode data_free distils a trained teacher: give --teacher_model_name_or_path (a teacher "
            "trained here would read the training split)."
        )
    if needs_teacher and not experiment_args.teacher and not config.teacher_model_name_or_path:
        raise ValueError(
            "Give --teacher (an architecture to train) or --teacher_model_name_or_path (a trained teacher)."
        )
    _check_teacher_sources(config)
    architectures = [("--student", experiment_args.student), ("--teacher", experiment_args.teacher)]
    architectures += [("--assistants", name) for name in experiment_args.assistants or []]
    if experiment_args.distillation_mode == "mutual":
        peers = [name.strip() for name in experiment_args.peers.split(",")]
        architectures += [("--peers", name) for name in peers if name not in ("teacher", "student")]
    for argument, value in architectures:
        if value:
            check_architecture(value, argument)
    if experiment_args.student_model_name_or_path:
        check_model_source(experiment_args.student_model_name_or_path, "--student_model_name_or_path")
    return data_args, experiment_args, config


def check_black_box_arguments(data_args: DataArguments, experiment_args: ExperimentArguments) -> None:
    """The black-box arguments need a teacher URL, and sizes that are positive. `--max_train_samples 0` (no training
    example) is a black-box run with `--transfer_dataset` only: the transfer set alone teaches the student."""
    if data_args.max_train_samples is not None and data_args.max_train_samples < 1:
        if not (data_args.max_train_samples == 0 and experiment_args.teacher_url and data_args.transfer_dataset):
            raise ValueError(
                f"max_train_samples must be a positive integer, got {data_args.max_train_samples} (0, no training "
                "example, only with --teacher_url and --transfer_dataset: the transfer set alone is then trained on)."
            )
    if not experiment_args.teacher_url:
        for name in ("transfer_dataset", "max_labeled_samples", "max_transfer_samples"):
            if getattr(data_args, name) is not None:
                raise ValueError(f"--{name} needs --teacher_url (a black-box teacher to answer the examples).")
        return
    for name in ("max_labeled_samples", "max_transfer_samples"):
        value = getattr(data_args, name)
        if value is not None and value < 0:
            raise ValueError(f"--{name} must be >= 0, got {value}.")
    if experiment_args.teacher_top_k < 1:
        raise ValueError(f"--teacher_top_k must be >= 1, got {experiment_args.teacher_top_k}.")


def _check_teacher_sources(config: DistillationConfig) -> None:
    """Each teacher to load exists; ensemble weights only come with an ensemble (one teacher would ignore them)."""
    sources = config.teacher_model_name_or_path
    sources = [sources] if isinstance(sources, str) else sources or []
    for source in sources:
        check_model_source(source, "--teacher_model_name_or_path")
    if config.teacher_weights and len(sources) < 2:
        raise ValueError(
            f"--teacher_weights {' '.join(str(w) for w in config.teacher_weights)} weighs the teachers of an ensemble, "
            f"but this run has one teacher ({sources[0] if sources else 'trained here'}): give several with "
            "--teacher_model_name_or_path a b ..., or leave --teacher_weights out."
        )


# ExperimentArguments fields that only mean something for images.
_IMAGE_ONLY = {
    "teacher": None, "student": None, "teacher_max_shift": 0, "distillation_mode": "offline", "assistants": None
}  # fmt: skip


from .text_arguments import TextArguments  # noqa: E402  (its own module: this one is at its size limit)


def parse_text_arguments(
    defaults: dict[str, Any] | None = None, argv: list[str] | None = None
) -> tuple[DataArguments, ExperimentArguments, TextArguments, DistillationConfig]:
    """The text example's arguments: `(DataArguments, ExperimentArguments, TextArguments, DistillationConfig)`."""
    data_args, experiment_args, text_args, config = parse_arguments(
        (DataArguments, ExperimentArguments, TextArguments, DistillationConfig), defaults, argv
    )
    if not data_args.dataset_name:
        raise ValueError("--dataset_name is required.")
    check_black_box_arguments(data_args, experiment_args)
    if not config.teacher_model_name_or_path and not experiment_args.teacher_url:
        raise ValueError(
            "--teacher_model_name_or_path is required: the teacher (or the pretrained encoder to fine-tune), or "
            "--teacher_url for a black-box teacher."
        )
    for name, unset in _IMAGE_ONLY.items():
        if getattr(experiment_args, name) != unset:
            raise ValueError(
                f"--{name} applies to image runs only; for text use --teacher_model_name_or_path and "
                "--student_model_name_or_path / --student_num_layers."
            )
    if data_args.image_column is not None:
        raise ValueError("--image_column applies to image runs only; for text use --text_column_names.")
    for name, unset in (("data_path", "auto"), ("streaming", False), ("random_flip", False), ("in_memory_limit_gb", None)):
        if getattr(data_args, name) != unset:
            raise ValueError(f"--{name} applies to image runs only.")
    _check_teacher_sources(config)
    if text_args.student_model_name_or_path:
        check_model_source(text_args.student_model_name_or_path, "--student_model_name_or_path")
    return data_args, experiment_args, text_args, config
