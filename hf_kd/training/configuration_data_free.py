"""`DataFreeConfig`: the settings of a data-free distillation run (a [`DistillationConfig`] plus the generator's)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from ..models.generator.configuration_generator import (
    GENERATOR_ARCHITECTURES,
    OUTPUT_NORMS,
)
from .configuration_distillation import DistillationConfig

DATA_FREE_METHODS = ("noise", "dafl", "dfad", "statistics")
STUDENT_LOSSES = ("kl", "l1")

# The references' defaults, by method: (generator lr, one-hot, entropy, activation, student steps per G step, loss).
_METHOD_DEFAULTS = {
    "noise": {"generator_learning_rate": 0.0, "student_steps_per_generator_step": 1, "student_loss": "kl"},
    # DAFL-train.py (MNIST): Adam lr_G 0.2, oh 1, ie 5, a 0.1; G and S stepped together; KL(T || S) at T = 1.
    "dafl": {
        "generator_learning_rate": 0.2, "one_hot_weight": 1.0, "information_entropy_weight": 5.0,
        "activation_weight": 0.1, "student_steps_per_generator_step": 1, "student_loss": "kl",
    },  # fmt: skip
    # DFAD_mnist.py: Adam lr_G 1e-3, 5 student steps per generator step, L1 on logits both ways.
    "dfad": {
        "generator_learning_rate": 1e-3, "one_hot_weight": 0.0, "information_entropy_weight": 0.0,
        "activation_weight": 0.0, "student_steps_per_generator_step": 5, "student_loss": "l1",
    },  # fmt: skip
    "statistics": {"generator_learning_rate": 1e-3, "student_steps_per_generator_step": 1, "student_loss": "kl"},
}


@dataclass
class DataFreeConfig(DistillationConfig):
    r"""
    Configuration for [`DataFreeDistillationTrainer`]: every [`DistillationConfig`] field, plus the generator's and
    the method's settings. No training data is read: each step draws a synthetic batch of
    `per_device_train_batch_size` inputs, for `max_steps` steps (required: there are no epochs without data).
    `temperature` is the student's KL temperature; `alpha` is unused (there are no labels).

    Parameters:
        data_free_method (`str`, *optional*, defaults to `"dafl"`):
            `"noise"`: Gaussian inputs, no generator (the baseline). `"dafl"` (Chen et al., 2019): a generator trained
            for confident (`one_hot_weight`), class-balanced (`information_entropy_weight`) and strongly activating
            (`activation_weight`) teacher answers. `"dfad"` (Fang et al., 2019): a generator trained adversarially to
            maximise the student-teacher L1 distance, the student to minimise it. `"statistics"` (Lopes et al., 2017):
            a class-conditional generator trained so that the teacher's activations match the statistics recorded
            beside it ([`hf_kd.teacher.statistics`]).
        generator_learning_rate (`float`, *optional*):
            Adam learning rate of the generator (default: DAFL's 0.2, DFAD's 1e-3; 1e-3 for statistics).
        generator_follows_schedule (`bool`, *optional*, defaults to `True`):
            Scale the generator's learning rate by the student's schedule (`lr_scheduler_type`, warmup), as DFAD's
            reference decays both optimizers together. Against a decaying student, a generator at a constant rate
            runs away: it keeps finding inputs the student no longer learns from, and the student's accuracy falls.
        one_hot_weight, information_entropy_weight, activation_weight (`float`, *optional*):
            Weights of DAFL's generator terms (default: 1, 5, 0.1 for dafl; 0 for dfad, where they can be added).
        student_steps_per_generator_step (`int`, *optional*):
            Student steps per generator step (default: DAFL 1, DFAD 5).
        student_loss (`str`, *optional*):
            `"kl"` (`T**2 KL(teacher || student)`, DAFL's) or `"l1"` (mean absolute logit difference, DFAD's).
        input_shape (`list[int]`, *optional*):
            `[channels, height, width]` of the teacher's input, when its config does not say (`num_channels` and
            `image_size`).
        generator_latent_dim, generator_hidden_size, generator_architecture, generator_output_norm:
            The generator ([`GeneratorConfig`]): latent 100, hidden 256, `"mlp"` or `"conv"`, `"batchnorm"` or
            `"pixels"`.
        statistics_weight, statistics_class_weight (`float`):
            `statistics`: weight of the activation-statistics match, and of `CE(teacher(x), y)` for the class `y`
            the example was generated for.
        batchnorm_statistics_weight (`float`, *optional*, defaults to `0`):
            DeepInversion's term on the teacher's BatchNorm running statistics, added to the generator's loss; needs
            a teacher with BatchNorm layers.
        collapse_guard (`bool`, *optional*, defaults to `True`):
            Watch each synthetic batch's diversity (normalised entropy of the teacher's class histogram, mean pairwise
            distance) and, after `collapse_patience` collapsed batches in a row, restore the generator's last good
            state (or a fresh one) with its optimizer, saying so in the log.
        collapse_min_class_entropy, collapse_min_distance_ratio, collapse_patience:
            A batch is collapsed when its pairwise distance is below `collapse_min_distance_ratio` (0.1) times that
            of the generator's first batch (or ~0: identical images), or, when `collapse_min_class_entropy` > 0 (off
            by default), its class entropy is below it after the generator has shown twice as much.
        replay_batches (`int`, *optional*, defaults to `0`):
            Each student step also trains on one past synthetic batch drawn from the last `replay_batches` (with
            its teacher logits), as Fast-DFKD replays a memory of synthetic data: less forgetting while the generator
            moves. Saved in checkpoints.
        save_generator (`bool`, *optional*, defaults to `True`):
            `save_model` also writes the generator to `<output_dir>/generator` (`GeneratorModel.from_pretrained`).
    """

    data_free_method: str = field(
        default="dafl", metadata={"help": "Data-free method.", "choices": list(DATA_FREE_METHODS)}
    )
    generator_learning_rate: float | None = field(
        default=None, metadata={"help": "Adam lr of the generator (default: dafl 0.2, dfad 1e-3, statistics 1e-3)."}
    )
    generator_follows_schedule: bool = field(
        default=True,
        metadata={"help": "Scale the generator's learning rate by the student's schedule (DFAD decays both together)."},
    )
    one_hot_weight: float | None = field(
        default=None, metadata={"help": "DAFL's one-hot term CE(t, argmax t) (default: dafl 1, dfad 0)."}
    )
    information_entropy_weight: float | None = field(
        default=None, metadata={"help": "DAFL's class-balance term sum p log10 p (default: dafl 5, dfad 0)."}
    )
    activation_weight: float | None = field(
        default=None, metadata={"help": "DAFL's activation term -mean|f_T| (default: dafl 0.1, dfad 0)."}
    )
    student_steps_per_generator_step: int | None = field(
        default=None, metadata={"help": "Student steps per generator step (default: dafl 1, dfad 5)."}
    )
    student_loss: str | None = field(
        default=None,
        metadata={"help": "Student loss: kl (T^2 KL(teacher || student)) or l1 (DFAD). Default by method.",
                  "choices": [*STUDENT_LOSSES, None]},
    )  # fmt: skip
    input_shape: list[int] | None = field(
        default=None, metadata={"help": "The teacher's input shape channels height width, when its config lacks it."}
    )
    generator_latent_dim: int = field(default=100, metadata={"help": "Latent size of the generator (DAFL, DFAD: 100)."})
    generator_hidden_size: int = field(default=256, metadata={"help": "Hidden width (mlp) or channels (conv)."})
    generator_architecture: str = field(
        default="mlp", metadata={"help": "Generator architecture.", "choices": list(GENERATOR_ARCHITECTURES)}
    )
    generator_output_norm: str = field(
        default="batchnorm",
        metadata={"help": "batchnorm: tanh + affine-free BatchNorm (DAFL); pixels: sigmoid + the processor's "
                          "normalisation.", "choices": list(OUTPUT_NORMS)},
    )  # fmt: skip
    statistics_weight: float = field(default=1.0, metadata={"help": "statistics: weight of the activation match."})
    statistics_class_weight: float = field(
        default=1.0, metadata={"help": "statistics: weight of CE(teacher(x), y) for the generated class y."}
    )
    batchnorm_statistics_weight: float = field(
        default=0.0, metadata={"help": "DeepInversion's BatchNorm-statistics term (a teacher with BatchNorm only)."}
    )
    collapse_guard: bool = field(default=True, metadata={"help": "Detect a collapsed generator and restore it."})
    collapse_min_class_entropy: float = field(
        default=0.0,
        metadata={"help": "Also count a batch whose teacher class histogram has a lower normalised entropy as collapsed, "
                          "once the generator has shown twice that (0: off; DFAD's early batches hold one class)."},
    )  # fmt: skip
    collapse_min_distance_ratio: float = field(
        default=0.1, metadata={"help": "A batch closer than this times the first batch's pairwise distance collapsed."}
    )
    collapse_patience: int = field(default=50, metadata={"help": "Collapsed batches in a row before restoring."})
    replay_batches: int = field(
        default=0,
        metadata={"help": "Train the student on each batch plus one of the last N synthetic batches (Fast-DFKD's "
                          "memory; 0: off)."},
    )  # fmt: skip
    save_generator: bool = field(default=True, metadata={"help": "save_model writes the generator too."})

    def __post_init__(self):
        super().__post_init__()
        if self.data_free_method not in DATA_FREE_METHODS:
            raise ValueError(f"data_free_method must be one of {list(DATA_FREE_METHODS)}, got {self.data_free_method!r}.")
        if self.max_steps <= 0:
            raise ValueError(
                "max_steps must be > 0 for data-free distillation: there is no training data, hence no epochs "
                f"(got max_steps={self.max_steps}); each step draws one synthetic batch of per_device_train_batch_size."
            )
        for name, value in _METHOD_DEFAULTS[self.data_free_method].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        for name in ("one_hot_weight", "information_entropy_weight", "activation_weight"):
            if getattr(self, name) is None:
                setattr(self, name, 0.0)
        self._check_numbers()
        if self.student_loss not in STUDENT_LOSSES:
            raise ValueError(f"student_loss must be one of {list(STUDENT_LOSSES)}, got {self.student_loss!r}.")
        if self.generator_architecture not in GENERATOR_ARCHITECTURES:
            raise ValueError(f"generator_architecture must be one of {list(GENERATOR_ARCHITECTURES)}, got "
                             f"{self.generator_architecture!r}.")  # fmt: skip
        if self.generator_output_norm not in OUTPUT_NORMS:
            raise ValueError(f"generator_output_norm must be one of {list(OUTPUT_NORMS)}, got {self.generator_output_norm!r}.")
        if self.input_shape is not None and (len(self.input_shape) != 3 or min(self.input_shape) < 1):
            raise ValueError(f"input_shape must be three positive integers (channels height width), got {self.input_shape}.")
        if isinstance(self.teacher_model_name_or_path, list):
            raise ValueError("Data-free distillation takes one teacher, got several in teacher_model_name_or_path.")

    def _check_numbers(self) -> None:
        for name in ("generator_learning_rate", "one_hot_weight", "information_entropy_weight", "activation_weight",
                     "statistics_weight", "statistics_class_weight", "batchnorm_statistics_weight",
                     "collapse_min_class_entropy", "collapse_min_distance_ratio"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
        if isinstance(self.replay_batches, bool) or not isinstance(self.replay_batches, int) or self.replay_batches < 0:
            raise ValueError(f"replay_batches must be an integer >= 0, got {self.replay_batches!r}.")
        for name in ("student_steps_per_generator_step", "collapse_patience", "generator_latent_dim",
                     "generator_hidden_size"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")

    @classmethod
    def from_config(cls, config: DistillationConfig, **changes) -> DataFreeConfig:
        """The same run's settings as a `DataFreeConfig` (with `changes` applied)."""
        values = {f.name: getattr(config, f.name) for f in fields(config) if f.init}
        return cls(**{**values, **changes})
