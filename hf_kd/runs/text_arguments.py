"""The text example's own arguments (`TextArguments`), beside the shared ones of `hf_kd.runs.arguments`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TextArguments:
    """The text side of a run: columns, tokenization, and where the student comes from.

    The teacher is `--teacher_model_name_or_path` (a [`DistillationConfig`] argument). The student is either
    `--student_model_name_or_path` (any sequence classifier, with its own tokenizer if it has one) or derived from
    the teacher's config with `--student_num_layers` layers, initialised from teacher layers (DistilBERT's recipe).
    """

    student_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A pretrained student (Hub id or directory), with its own tokenizer. Default: derive the student "
            "from the teacher (see --student_num_layers)."
        },
    )
    student_num_layers: int | None = field(
        default=None,
        metadata={
            "help": "Layers of the student derived from the teacher's config (default: half the teacher's). Not used "
            "with --student_model_name_or_path."
        },
    )
    student_layer_indices: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated teacher layers the derived student starts from, e.g. '0,5' (default: evenly "
            "spread from the first to the last, DistilBERT's 12 -> 6 choice 0,2,4,7,9,11)."
        },
    )
    init_student_from_teacher: bool = field(
        default=True,
        metadata={
            "help": "Initialise the derived student from the teacher's layers, embeddings and head (DistilBERT's "
            "recipe); --init_student_from_teacher false starts it from random weights."
        },
    )
    student_init_from: str = field(
        default="fine-tuned",
        metadata={
            "help": "Which teacher weights a derived student starts from when the teacher is fine-tuned here: "
            "'fine-tuned' (the teacher it distils, head included) or 'pretrained' (the encoder before this run "
            "fine-tunes it, with its new head, as DistilBERT started from pretrained BERT).",
            "choices": ["fine-tuned", "pretrained"],
        },
    )
    text_column_names: str | None = field(
        default=None,
        metadata={
            "help": "The text column, or two comma-separated for sentence pairs (default: detected, e.g. text, "
            "sentence1,sentence2, premise,hypothesis)."
        },
    )
    max_length: int = field(default=128, metadata={"help": "Truncate token sequences to this many tokens."})
    train_teacher: str = field(
        default="auto",
        metadata={
            "help": "Fine-tune the teacher before distilling: 'auto' when its classification head is new (a "
            "pretrained encoder not yet trained for this task), 'yes' always, 'no' never.",
            "choices": ["auto", "yes", "no"],
        },
    )
    f1_metric_name_or_path: str | None = field(
        default="f1",
        metadata={
            "help": "The evaluate F1 metric reported beside accuracy for two-class tasks: a Hub name or a local "
            "module directory (offline). Skipped with a warning when it cannot be loaded; 'none' turns it off."
        },
    )

    def __post_init__(self):
        if self.train_teacher not in ("auto", "yes", "no"):
            raise ValueError(f"train_teacher must be 'auto', 'yes' or 'no', got {self.train_teacher!r}.")
        if self.student_init_from not in ("fine-tuned", "pretrained"):
            raise ValueError(f"student_init_from must be 'fine-tuned' or 'pretrained', got {self.student_init_from!r}.")
        if self.max_length < 8:
            raise ValueError(f"max_length must be >= 8 tokens, got {self.max_length}.")
        if self.student_model_name_or_path and self.student_layer_indices:
            raise ValueError(
                "student_layer_indices picks the teacher layers of a derived student; it cannot be combined with "
                "student_model_name_or_path."
            )

    @property
    def layer_indices(self) -> list[int] | None:
        if not self.student_layer_indices:
            return None
        try:
            return [int(i) for i in self.student_layer_indices.split(",")]
        except ValueError:
            raise ValueError(
                f"student_layer_indices must be comma-separated integers, got {self.student_layer_indices!r}."
            ) from None
