"""Online and self distillation as experiment stages, composed from [`hf_kd.runs.experiment`]'s.

- [`train_mutual`]: K peers trained together by deep mutual learning ([`MutualLearningTrainer`]), one [`Trained`]
  per peer (`<name>/peer_<k>`).
- [`born_again`]: generations of one architecture (Furlanello et al., 2018), each a [`distil`] whose teacher is the
  previous generation (or the ensemble of all earlier ones).
- [`distil_from_ema`]: self-distillation from an exponential moving average of the student itself
  ([`EMATeacherCallback`]).

Beside `experiment.py` rather than in it only because that module is at the project's size limit; these are stages
like its own, taking and returning [`Trained`] results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from transformers import PreTrainedModel, set_seed
from transformers.utils import logging

from ..training.configuration_distillation import DistillationConfig
from ..training.ema import EMATeacherCallback
from ..training.mutual import PEER_DIR, MutualLearningConfig, MutualLearningTrainer
from ..training.trainer import DistillationTrainer
from .experiment import ModelData, Trained, distil, run_stage, stage_args

logger = logging.get_logger(__name__)

MUTUAL_DIR, GENERATION_DIR, EMA_DIR = "mutual", "generation_{}", "student_ema"


def train_mutual(
    peers: Sequence[PreTrainedModel], data: ModelData, config: DistillationConfig, compute_metrics: Callable,
    name: str = MUTUAL_DIR, kl_weight: float = 1.0,
) -> list[Trained]:  # fmt: skip
    """Train `peers` together by deep mutual learning, with the run's settings (`temperature`, `loss_type`, epochs,
    seed...) and `kl_weight`. Returns one [`Trained`] per peer, named `<name>/peer_<k>` (where each is saved)."""
    # No teacher to load or precompute: every peer is trained (the examples' configs may ask for precomputing).
    args = MutualLearningConfig.from_config(
        stage_args(config, name, data.train_dataset),
        kl_weight=kl_weight, precompute_teacher_logits=False, teacher_model_name_or_path=None,
    )  # fmt: skip
    trainer = MutualLearningTrainer(
        models=list(peers), args=args, train_dataset=data.train_dataset, eval_dataset=data.eval_dataset,
        data_collator=data.data_collator, processing_class=data.processing_class, compute_metrics=compute_metrics,
    )  # fmt: skip
    run = run_stage(name, trainer, data)
    return [
        Trained(f"{name}/{PEER_DIR.format(k)}", peer, data, run.train_time_s, run.log_history, trainer)
        for k, peer in enumerate(trainer.peers)
    ]


def born_again(
    first: Trained, build_student: Callable[[], PreTrainedModel], data: ModelData, config: DistillationConfig,
    compute_metrics: Callable, generations: int = 3, ensemble: bool = False,
) -> list[Trained]:  # fmt: skip
    """Born-again networks: generation `g = 1..generations` is a fresh `build_student()` distilled from generation
    `g - 1` (`first` is generation 0, e.g. the CE-only baseline), or with `ensemble=True` from the mean of the
    probabilities of generations `0..g-1` ([`hf_kd.ensemble.TeacherEnsemble`], at the run's temperature).
    Returns generations 1..`generations`, named `generation_<g>`."""
    if generations < 1:
        raise ValueError(f"generations must be >= 1, got {generations}.")
    chain = [first]
    for g in range(1, generations + 1):
        teacher = chain[-1]
        if ensemble and g > 1:
            from ..teacher.ensemble import TeacherEnsemble

            teacher = TeacherEnsemble([run.model for run in chain], names=[run.name for run in chain],
                                      temperature=config.temperature)  # fmt: skip
        teacher_model = teacher.model if isinstance(teacher, Trained) else teacher
        teacher_model.eval()
        chain.append(distil(build_student(), teacher_model, data, config, compute_metrics, GENERATION_DIR.format(g)))
    return chain[1:]


def distil_from_ema(
    student: PreTrainedModel, data: ModelData, config: DistillationConfig, compute_metrics: Callable,
    decay: float = 0.99, name: str = EMA_DIR,
) -> Trained:  # fmt: skip
    """Self-distillation: `student` distilled (the run's loss, `alpha`, `T`) from an exponential moving average of
    itself, updated after every optimizer step ([`EMATeacherCallback`]); the teacher starts as a copy of the
    student. The run's `precompute_teacher_logits` is turned off here (with a warning): the teacher changes at every
    step (the callback refuses precomputed logits outright)."""
    if config.precompute_teacher_logits:
        logger.warning(f"{name}: precompute_teacher_logits is turned off: the EMA teacher changes at every step.")
    args = stage_args(config, name, data.train_dataset, precompute_teacher_logits=False)
    ema = EMATeacherCallback.from_student(student, decay=decay)
    set_seed(config.seed)
    trainer = DistillationTrainer(
        model=student, teacher_model=ema.teacher, args=args,
        train_dataset=data.train_dataset, eval_dataset=data.eval_dataset, data_collator=data.data_collator,
        processing_class=data.processing_class, compute_metrics=compute_metrics, callbacks=[ema],
    )  # fmt: skip
    return run_stage(name, trainer, data)
