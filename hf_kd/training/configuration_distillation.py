"""`DistillationConfig`: the training arguments of a distillation run."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from ..features.connectors import FEATURE_CONNECTORS
from ..features.names import parse_feature_pairs
from ..features.table import FEATURE_LOSSES, feature_loss
from ..losses.logit import SOFT_LOSS_TYPES
from ..placement import TEACHER_SHARDINGS
from ..teacher.ensemble import ENSEMBLE_METHODS, normalized_weights
from ..teacher.loading import TEACHER_DTYPES, TEACHER_LOGITS_DTYPES


@dataclass
class DistillationConfig(TrainingArguments):
    r"""
    Configuration for [`DistillationTrainer`]: every [`~transformers.TrainingArguments`] field, plus the distillation
    settings below. Parse it from the command line with [`~transformers.HfArgumentParser`].

    The objective is `(1 - alpha) * CE(student, labels) + alpha * T**2 * KL(softmax(teacher / T) || softmax(student / T))`.

    Parameters:
        temperature (`float`, *optional*, defaults to `4.0`):
            Softening temperature `T` of both distributions in the soft-target term (must be > 0).
        alpha (`float`, *optional*, defaults to `0.5`):
            Weight of the teacher's (soft-target) term, in `[0, 1]`. `0` is plain cross-entropy training, `1` pure
            distillation with no ground-truth labels needed.
        loss_type (`str`, *optional*, defaults to `"kl"`):
            The soft-target term: `"kl"` (Hinton et al.), `"reverse_kl"` (mode-seeking `KL(student || teacher)`) or
            `"mse"` (squared error between logits).
        teacher_model_name_or_path (`str` or `list[str]`, *optional*):
            Teacher to load when [`DistillationTrainer`] is not given a teacher model: a local directory or a Hub id.
            Several (a list; space-separated on the command line) are distilled as one ensemble (see
            [`hf_kd.teacher.ensemble`]). A list of one is read as its string.
        ensemble_method (`str`, *optional*, defaults to `"mean_probs"`):
            How an ensemble of teachers combines them: `"mean_probs"` (the weighted mixture of their softened
            distributions, exactly), `"mean_logits"` (the weighted mean of their logits, TextBrewer's) or
            `"confidence"` (per example, CA-MKD's weights from each teacher's cross-entropy on the true label).
        teacher_weights (`list[float]`, *optional*):
            Static weights of an ensemble's teachers, one per teacher, normalised to sum to 1 (default: equal).
        teacher_model_init_kwargs (`dict[str, Any]` or `str`, *optional*):
            Keyword arguments for the teacher's `from_pretrained` (a JSON string on the command line), e.g.
            `'{"revision": "main", "dtype": "bfloat16"}'`.
        teacher_dtype (`str`, *optional*):
            Hold the teacher's weights in this precision (`"bfloat16"`, `"float16"` or `"float32"`) for the whole
            run: it only runs inference, so bf16 halves its memory with no optimizer state to protect. Its logits are
            upcast to float32 before the loss. Default: the precision it was loaded in.
        teacher_sharding (`str`, *optional*, defaults to `"auto"`):
            How the processes of a sharded run hold the teacher. `"whole"`: every process holds the teacher's full
            weights in its dtype (e.g. 2 bytes per parameter in bf16) and runs it without communication; under
            DeepSpeed ZeRO-3 it gets a stage-0 engine, gathered whole first if `zero.Init` partitioned it at load
            time. `"sharded"` (DeepSpeed ZeRO-3 or FSDP only): each of N processes holds ~1/N of its weights, and
            every forward all-gathers each layer in turn (all processes run it together); under ZeRO-3 it gets its own
            ZeRO-3 engine (as TRL does), under FSDP it is wrapped with the plugin's settings, without gradients.
            `"auto"`: sharded under ZeRO-3, whole otherwise (DDP, ZeRO-1/2, FSDP).
        precompute_teacher_logits (`bool`, *optional*, defaults to `False`):
            Run the teacher once over the train dataset before training and cache its logits (a `teacher_logits`
            column, see [`add_teacher_logits`]) instead of running it on every batch. Only valid without on-the-fly
            augmentation. With `feature_pairs`, the teacher features they compare are cached in the same pass
            (`teacher_feature_<i>` columns) when each is a vector per example; feature maps and token states are
            refused with the size they would take.
        teacher_logits_dtype (`str`, *optional*, defaults to `"float32"`):
            Storage precision of precomputed teacher logits: `"float32"` or `"float16"`.
        teacher_batch_size (`int` or `str`, *optional*, defaults to `"auto"`):
            Batch size of the teacher's inference pass when precomputing its logits. `"auto"` (or `None`) times a
            few sizes on the first batches on the device and keeps the fastest per token (logged): small on a
            cache-bound CPU, large on a GPU.
        feature_pairs (`list[str]`, *optional*):
            White-box distillation: `"student_feature:teacher_feature"` pairs whose features a feature term compares
            (names as in [`hf_kd.features.names`]: `hidden_states.<i>`, `attentions.<i>`, a module path such as
            `bert.encoder.layer.3`, optionally with `@input`), or `["auto"]`: pairs chosen by relative depth with
            connectors sized by a shape probe. The teacher then runs on every batch, unless
            `precompute_teacher_logits` caches its features (vectors only) with its logits.
        feature_loss (`str`, *optional*, defaults to `"hint"`):
            The feature term: `"hint"` (FitNets), `"cosine"` (DistilBERT), `"overhaul"` (Heo et al., pre-ReLU
            features with margins), `"attention"` (attention transfer), `"hidden_mse"` / `"attention_mse"`
            (TinyBERT), `"pkd"` (normalised [CLS] MSE), `"rkd"` (relational distances and angles) or `"triplet"`
            (teacher-anchored triplet).
        feature_weight (`float`, *optional*):
            Weight of the feature term added to the logit objective. Default: the reference implementation's factor
            for `feature_loss` (the `default_weight` of its entry in `hf_kd.features.table`, e.g. 1e3 for attention transfer).
        feature_connector (`str`, *optional*, defaults to `"auto"`):
            How a student feature reaches its teacher's shape: `"auto"` (identity when the shapes match, else a
            Linear for vectors and token states or a 1x1 conv for maps; the overhaul's adds a BatchNorm), `"linear"`,
            `"conv"` or `"identity"`. Connectors are trained with the student, checkpointed, and never saved with it.
    """

    _VALID_DICT_FIELDS = TrainingArguments._VALID_DICT_FIELDS + ["teacher_model_init_kwargs"]

    temperature: float = field(
        default=4.0,
        metadata={
            "help": "Softening temperature T of the soft-target term (> 0). Default 4.0: Hinton et al. (2015, "
            "section 3) found T in 2.5-4 best for small distilled MLPs on MNIST, and hf_kd's MNIST study "
            "(README) confirms 4 for the reference student."
        },
    )
    alpha: float = field(
        default=0.5,
        metadata={
            "help": "Weight of the teacher's soft-target term in [0, 1]: loss = (1 - alpha) * CE + alpha * soft. "
            "0 is plain cross-entropy, 1 pure distillation (no labels needed)."
        },
    )
    loss_type: str = field(
        default="kl",
        metadata={
            "help": "Soft-target term: 'kl' (Hinton et al., forward KL), 'reverse_kl' (KL(student || teacher)) or "
            "'mse' (squared error between logits).",
            "choices": list(SOFT_LOSS_TYPES),
        },
    )
    teacher_model_name_or_path: list[str] | None = field(
        default=None,
        metadata={
            "help": "Teacher to load when the trainer is not given a teacher model: a local directory or a Hub id. "
            "Several (space-separated) are distilled as one ensemble (see --ensemble_method, --teacher_weights)."
        },
    )
    ensemble_method: str = field(
        default="mean_probs",
        metadata={
            "help": "How an ensemble of teachers is combined: 'mean_probs' (the mixture of their softened "
            "distributions), 'mean_logits' (the mean of their logits) or 'confidence' (per example, weights from each "
            "teacher's cross-entropy on the true label, CA-MKD; needs the teachers live).",
            "choices": list(ENSEMBLE_METHODS),
        },
    )
    teacher_weights: list[float] | None = field(
        default=None,
        metadata={"help": "Weights of an ensemble's teachers, one per teacher (normalised; default: equal)."},
    )
    teacher_model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments for the teacher's from_pretrained, as JSON on the command line, e.g. "
            '\'{"revision": "main", "dtype": "bfloat16"}\'.'
        },
    )

    teacher_dtype: str | None = field(
        default=None,
        metadata={
            "help": "Hold the teacher's weights in this precision for inference (half the memory of float32 with "
            "bfloat16/float16); its logits are upcast to float32 before the loss. Default: as loaded.",
            "choices": list(TEACHER_DTYPES),
        },
    )
    teacher_sharding: str = field(
        default="auto",
        metadata={
            "help": "How each process holds the teacher. 'whole': its full weights in its dtype on every process (no "
            "communication). 'sharded' (DeepSpeed ZeRO-3 or FSDP only): ~1/N of them on each of N processes, plus an "
            "all-gather of each layer at every forward (its own ZeRO-3 engine, or FSDP with the plugin's settings). "
            "'auto': sharded under ZeRO-3, whole otherwise.",
            "choices": list(TEACHER_SHARDINGS),
        },
    )
    precompute_teacher_logits: bool = field(
        default=False,
        metadata={
            "help": "Run the teacher once over the train dataset and cache its logits instead of running it on every "
            "batch (no on-the-fly augmentation allowed)."
        },
    )
    teacher_logits_dtype: str = field(
        default="float32",
        metadata={"help": "Storage precision of precomputed teacher logits.", "choices": list(TEACHER_LOGITS_DTYPES)},
    )
    teacher_batch_size: int | str | None = field(
        default="auto",
        metadata={
            "help": "Batch size of the teacher's inference pass when precomputing its logits: an integer >= 1, or "
            "'auto' to time a few sizes on the first batches and keep the fastest per token (logged)."
        },
    )
    feature_pairs: list[str] | None = field(
        default=None,
        metadata={
            "help": "White-box distillation: 'student_feature:teacher_feature' pairs (e.g. 'hidden_states.1:"
            "hidden_states.3', 'convs.0:convs.1', 'encoder.layer.1@input:encoder.layer.5@input'), or 'auto' (pairs "
            "by relative depth, connectors sized by a shape probe). The teacher then runs on every batch."
        },
    )
    feature_loss: str = field(
        default="hint",
        metadata={"help": "The feature term compared over feature_pairs.", "choices": list(FEATURE_LOSSES)},
    )
    feature_weight: float | None = field(
        default=None,
        metadata={
            "help": "Weight of the feature term. Default: the reference implementation's factor for feature_loss "
            "(its default_weight in hf_kd.features.table)."
        },
    )
    feature_connector: str = field(
        default="auto",
        metadata={
            "help": "Connector from a student feature to its teacher's shape: 'auto' (identity when the shapes match, "
            "else Linear / 1x1 conv, + BatchNorm for the overhaul), 'linear', 'conv' or 'identity'.",
            "choices": list(FEATURE_CONNECTORS),
        },
    )

    def __post_init__(self):
        super().__post_init__()
        # inf/NaN would pass a plain comparison and train a NaN student: each must be a finite number.
        finite = "a finite number: inf or NaN makes the loss NaN"
        if not isinstance(self.temperature, (int, float)) or not 0 < self.temperature < math.inf:
            raise ValueError(f"temperature must be a number > 0, got {self.temperature!r} ({finite}).")
        if not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha <= 1.0:  # False for NaN
            raise ValueError(
                f"alpha must be a number in [0, 1] (the weight of the teacher's term), got {self.alpha!r} ({finite})."
            )
        self._check_training_length()
        if self.loss_type not in SOFT_LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {list(SOFT_LOSS_TYPES)}, got {self.loss_type!r}.")
        if self.teacher_dtype is not None and self.teacher_dtype not in TEACHER_DTYPES:
            raise ValueError(f"teacher_dtype must be one of {list(TEACHER_DTYPES)}, got {self.teacher_dtype!r}.")
        if self.teacher_sharding not in TEACHER_SHARDINGS:
            raise ValueError(
                f"teacher_sharding must be one of {list(TEACHER_SHARDINGS)}, got {self.teacher_sharding!r} ('sharded' "
                "needs DeepSpeed ZeRO-3 or FSDP)."
            )
        if self.teacher_logits_dtype not in TEACHER_LOGITS_DTYPES:
            raise ValueError(
                f"teacher_logits_dtype must be one of {list(TEACHER_LOGITS_DTYPES)}, got {self.teacher_logits_dtype!r}."
            )
        if isinstance(self.teacher_batch_size, str) and self.teacher_batch_size.isdigit():
            self.teacher_batch_size = int(self.teacher_batch_size)  # from the command line
        if self.teacher_batch_size is None:
            self.teacher_batch_size = "auto"
        if self.teacher_batch_size != "auto" and (
            isinstance(self.teacher_batch_size, bool)
            or not isinstance(self.teacher_batch_size, int)
            or self.teacher_batch_size < 1
        ):
            raise ValueError(f"teacher_batch_size must be an integer >= 1 or 'auto', got {self.teacher_batch_size!r}.")
        if self.teacher_model_init_kwargs is not None and not isinstance(self.teacher_model_init_kwargs, dict):
            raise ValueError(
                "teacher_model_init_kwargs must be a dict (or a JSON object string on the command line), got "
                f"{self.teacher_model_init_kwargs!r}."
            )
        self._check_teachers()
        self._check_features()

    def _check_teachers(self) -> None:
        """One teacher stays a string (a list of one from the command line too); several form an ensemble, whose
        method and weights must fit them."""
        teachers = self.teacher_model_name_or_path
        if isinstance(teachers, (list, tuple)):
            if not teachers or not all(isinstance(t, str) and t for t in teachers):
                raise ValueError(f"teacher_model_name_or_path must name one or more teachers, got {teachers!r}.")
            self.teacher_model_name_or_path = teachers[0] if len(teachers) == 1 else list(teachers)
        if self.ensemble_method not in ENSEMBLE_METHODS:
            raise ValueError(f"ensemble_method must be one of {list(ENSEMBLE_METHODS)}, got {self.ensemble_method!r}.")
        if self.teacher_weights is not None:
            if self.ensemble_method == "confidence":
                raise ValueError("teacher_weights cannot be combined with ensemble_method='confidence' (its weights "
                                 "are per example, from each teacher's confidence on the true label).")  # fmt: skip
            count = len(teachers) if isinstance(teachers, list) else len(self.teacher_weights)
            normalized_weights(self.teacher_weights, count)  # raises on a wrong count or a weight <= 0

    def _check_training_length(self) -> None:
        """Refuse a run that would not train at all: it would save, measure and report untrained models."""
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(
                f"max_steps must be > 0 (or -1, the default, to train for num_train_epochs), got {self.max_steps}."
            )
        if self.max_steps == -1 and not self.num_train_epochs > 0:
            raise ValueError(
                f"num_train_epochs must be > 0 (or set max_steps > 0), got {self.num_train_epochs}: the run would "
                "report untrained models."
            )

    def _check_features(self) -> None:
        """Parse the feature pairs (a malformed one names itself), check the loss and connector, and resolve the
        default weight of the feature term."""
        if self.feature_loss not in FEATURE_LOSSES:
            raise ValueError(f"feature_loss must be one of {list(FEATURE_LOSSES)}, got {self.feature_loss!r}.")
        if self.feature_connector not in FEATURE_CONNECTORS:
            raise ValueError(
                f"feature_connector must be one of {list(FEATURE_CONNECTORS)}, got {self.feature_connector!r}."
            )
        if self.feature_pairs is None:
            return
        if isinstance(self.feature_pairs, str):
            self.feature_pairs = [self.feature_pairs]
        parse_feature_pairs(self.feature_pairs)
        if self.feature_weight is None:
            self.feature_weight = feature_loss(self.feature_loss).default_weight
        if not isinstance(self.feature_weight, (int, float)) or not 0 <= self.feature_weight < math.inf:
            raise ValueError(f"feature_weight must be a finite number >= 0, got {self.feature_weight!r}.")
