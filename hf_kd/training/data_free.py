"""Data-free distillation: a student distilled from a frozen teacher alone, on inputs synthesised against it.

[`DataFreeDistillationTrainer`] is a sibling of [`DistillationTrainer`]: the Trainer trains the student; a generator
([`hf_kd.models.generator.GeneratorModel`]) is trained beside it with its own Adam optimizer, checkpointed and
restored with it. The training "dataset" is only a count of steps ([`SyntheticSteps`]): no real example is read.
Methods (`DataFreeConfig.data_free_method`): `noise`, `dafl`, `dfad`, `statistics`; their losses are
[`hf_kd.losses.generator`]'s.
"""

from __future__ import annotations

import copy
import os
import zlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from ..batch import LABELS
from ..data import collate_batches
from ..losses import generator as generator_losses
from ..models.generator import GeneratorConfig, GeneratorModel
from ..placement import prepare_teacher
from ..teacher.loading import check_compatible, load_teacher, logits_of
from ..teacher.statistics import ActivationStatistics, teacher_activations
from .base import HfKdTrainer
from .configuration_data_free import DataFreeConfig

logger = logging.get_logger(__name__)

STATE_NAME = "data_free_state.pt"
GENERATOR_DIR = "generator"


class SyntheticSteps(torch.utils.data.Dataset):
    """`length` indices and nothing else: the Trainer's loop counts steps over it; each batch's content is synthesised
    by the trainer. Served as whole batches (`__getitems__`), like [`hf_kd.data.InMemoryDataset`]."""

    def __init__(self, length: int):
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"synthetic_index": torch.tensor(index)}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return {"synthetic_index": torch.as_tensor(indices)}


def input_shape_of(teacher: nn.Module, input_shape: list[int] | None = None) -> list[int]:
    """`[channels, height, width]` of the teacher's input: `input_shape` when given, else its config's `num_channels`
    and `image_size`. A text teacher is refused: data-free distillation is for image classifiers here."""
    config = getattr(teacher, "config", None)
    main_input = getattr(teacher, "main_input_name", None)
    if main_input == "input_ids" or getattr(config, "vocab_size", None) is not None:
        raise ValueError(
            f"The teacher ({type(teacher).__name__}) reads tokens: data-free distillation in hf_kd is for image "
            "classifiers (a generator of images against the teacher); distil a text teacher with data."
        )
    if input_shape is not None:
        return [int(v) for v in input_shape]
    channels, size = getattr(config, "num_channels", None), getattr(config, "image_size", None)
    if channels is None or size is None:
        raise ValueError(
            f"Cannot infer the input shape of the teacher ({type(teacher).__name__}): its config has no "
            "num_channels / image_size. Give it as input_shape, e.g. --input_shape 3 32 32 (channels height width)."
        )
    height, width = (size, size) if isinstance(size, int) else size
    return [int(channels), int(height), int(width)]


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


class DataFreeDistillationTrainer(HfKdTrainer):
    """A [`~transformers.Trainer`] that distils a frozen image teacher into the student without training data.

    Each training step draws a synthetic batch (Gaussian noise, or the generator's images), labels it with the
    teacher's logits and trains the student on it (`student_loss`: `T**2 KL(teacher || student)` or DFAD's L1). Every
    `student_steps_per_generator_step` steps the generator takes one Adam step on its method's loss. Latents are drawn
    from a generator seeded by `(seed, process, step)`: a resumed run draws what the uninterrupted one would have.

    Args:
        model: the student.
        teacher_model: the frozen teacher (a model, or a directory / Hub id loaded with the student's Auto class).
        args ([`DataFreeConfig`]): training, generator and method settings.
        generator ([`GeneratorModel`], *optional*): default: built from `args` for the teacher's input shape.
        activation_statistics ([`ActivationStatistics`], *optional*): method `statistics`; default: read from beside
            the teacher.
        eval_dataset, processing_class, compute_metrics, callbacks: as for the Trainer; evaluation reads real data.

    Logged (as `loss_<name>`): the student's loss, the generator's terms (`loss_generator_<term>`), and the diversity
    of each synthetic batch (`diversity_class_entropy`, `diversity_pairwise_distance`) and `collapses` so far.
    """

    _tag_names = ["hf_kd", "knowledge-distillation", "data-free"]

    def __init__(
        self, model: PreTrainedModel, teacher_model: nn.Module | str | None = None, args: DataFreeConfig | None = None,
        generator: GeneratorModel | None = None, activation_statistics: ActivationStatistics | None = None,
        eval_dataset: Any = None, processing_class: Any = None, compute_metrics: Callable | None = None, **kwargs,
    ):  # fmt: skip
        if not isinstance(args, DataFreeConfig):
            raise TypeError(f"args must be a DataFreeConfig, got {type(args).__name__}.")
        teacher = teacher_model if teacher_model is not None else args.teacher_model_name_or_path
        if teacher is None:
            raise ValueError("DataFreeDistillationTrainer needs a teacher: teacher_model or teacher_model_name_or_path.")
        if isinstance(teacher, str):
            teacher = load_teacher(teacher, model, args.teacher_model_init_kwargs)
        self.input_shape = input_shape_of(teacher, args.input_shape)
        check_compatible(model, teacher)
        self.num_classes = teacher.config.num_labels
        self.statistics = self._statistics_for(teacher, args, activation_statistics)
        if args.batchnorm_statistics_weight > 0 and not batchnorm_layers(teacher):
            raise ValueError(
                f"batchnorm_statistics_weight={args.batchnorm_statistics_weight} matches the teacher's BatchNorm "
                f"running statistics, but the teacher ({type(teacher).__name__}) has no BatchNorm layer. Set it to 0 "
                "(or use data_free_method='statistics' with recorded activation statistics)."
            )
        if args.data_free_method != "noise" and generator is None:
            generator = GeneratorModel(self.generator_config(args, processing_class))
        length = args.max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps
        super().__init__(
            model=model, args=args, train_dataset=SyntheticSteps(length * args.world_size), eval_dataset=eval_dataset,
            data_collator=collate_batches, processing_class=processing_class, compute_metrics=compute_metrics, **kwargs,
        )  # fmt: skip
        self.teacher_model = prepare_teacher(teacher, self.accelerator, sharding="whole")
        self.generator = generator.to(self.accelerator.device).train() if generator is not None else None
        self.generator_optimizer = (
            torch.optim.Adam(self.generator.parameters(), lr=args.generator_learning_rate) if generator else None
        )
        self.replay_pool: list[tuple[torch.Tensor, torch.Tensor]] = []  # past synthetic batches (replay_batches)
        self._calls = 0  # training compute_loss calls of this process (a resume restarts at a step boundary)
        self.guard = {"reference_distance": None, "collapsed_run": 0, "collapses": 0, "restores_of_snapshot": 0,
                      "best_class_entropy": 0.0, "snapshot": None, "snapshot_step": None}  # fmt: skip

    # -----------------------------------------------------------------------------------------------------------------
    # Set-up

    def generator_config(self, args: DataFreeConfig, processing_class: Any = None) -> GeneratorConfig:
        """The default generator for this teacher: `args`' sizes, the teacher's input shape, the processor's
        normalisation (for `pixels` output), conditional on the class for `statistics`."""
        mean = getattr(processing_class, "image_mean", None) or [0.0]
        std = getattr(processing_class, "image_std", None) or [1.0]
        return GeneratorConfig(
            latent_dim=args.generator_latent_dim, hidden_size=args.generator_hidden_size,
            image_shape=self.input_shape, architecture=args.generator_architecture,
            output_norm=args.generator_output_norm, image_mean=list(mean), image_std=list(std),
            num_classes=self.num_classes if args.data_free_method == "statistics" else 0,
        )  # fmt: skip

    @staticmethod
    def _statistics_for(teacher, args: DataFreeConfig, given: ActivationStatistics | None):
        if args.data_free_method != "statistics":
            return None
        statistics = given if given is not None else ActivationStatistics.from_pretrained(teacher)
        if statistics.num_classes != teacher.config.num_labels:
            raise ValueError(f"The activation statistics have {statistics.num_classes} classes, the teacher "
                             f"{teacher.config.num_labels}: they were recorded for another model.")  # fmt: skip
        return statistics

    def _get_collator_with_removed_columns(self, data_collator: Callable, description: str | None = None) -> Callable:
        # The synthetic steps carry no model input to filter (the Trainer would drop their one column).
        return data_collator if description == "Training" else super()._get_collator_with_removed_columns(
            data_collator, description
        )

    # -----------------------------------------------------------------------------------------------------------------
    # Synthetic batches

    def _random(self, step: int, role: str) -> torch.Generator:
        """A CPU random generator for `(seed, process, step, role)`: resuming at step k draws what step k drew."""
        key = f"{self.args.seed}/{self.args.process_index}/{step}/{role}".encode()
        return torch.Generator().manual_seed(zlib.crc32(key))

    def synthesise(self, step: int, role: str = "student", batch_size: int | None = None):
        """A batch of inputs for step `step` and the classes it was generated for (`statistics`; else `None`),
        with gradients to the generator (wrap in `torch.no_grad()` for the student's batch)."""
        batch_size = batch_size or self.args.per_device_train_batch_size
        device = self.accelerator.device
        random = self._random(step, role)
        if self.generator is None:  # noise: Gaussian inputs in the normalised input space
            return torch.randn(batch_size, *self.input_shape, generator=random).to(device), None
        latents = torch.randn(batch_size, self.generator.config.latent_dim, generator=random).to(device)
        labels = None
        if self.generator.config.num_classes:  # balanced classes, in a random order
            labels = (torch.randperm(batch_size, generator=random) % self.num_classes).to(device)
        return self.generator(latents, labels), labels

    def _teacher_outputs(self, inputs: torch.Tensor, hidden: bool):
        name = getattr(self.teacher_model, "main_input_name", "pixel_values")
        kwargs = {"output_hidden_states": True} if hidden else {}
        return self.teacher_model(**{name: inputs.to(next(self.teacher_model.parameters()).dtype)}, **kwargs)

    # -----------------------------------------------------------------------------------------------------------------
    # The generator's step

    def generator_loss_terms(self, step: int) -> dict[str, torch.Tensor]:
        """The generator's weighted terms for one batch of step `step`, by name (summed into its loss)."""
        args = self.args
        images, labels = self.synthesise(step, "generator")
        terms = {}
        if args.data_free_method == "statistics":
            layers = teacher_activations(self.teacher_model, images)
            matches = [
                generator_losses.activation_statistics_loss(
                    layers[name], labels, self.statistics.means[name].to(images.device),
                    self.statistics.variances[name].to(images.device),
                )  # fmt: skip
                for name in self.statistics.layers
            ]
            terms["statistics"] = args.statistics_weight * torch.stack(matches).mean()
            terms["class"] = args.statistics_class_weight * F.cross_entropy(layers["logits"], labels)
            teacher_logits = layers["logits"]
        else:
            with self._batchnorm_inputs() as recorded:
                outputs = self._teacher_outputs(images, hidden=args.activation_weight > 0)
            teacher_logits = logits_of(outputs)
            if args.one_hot_weight:
                terms["one_hot"] = args.one_hot_weight * generator_losses.one_hot_loss(teacher_logits)
            if args.information_entropy_weight:
                terms["information_entropy"] = args.information_entropy_weight * (
                    generator_losses.information_entropy_loss(teacher_logits)
                )
            if args.activation_weight:
                features = outputs["hidden_states"][-1]
                terms["activation"] = args.activation_weight * generator_losses.activation_loss(features)
            if recorded:
                terms["batchnorm"] = args.batchnorm_statistics_weight * generator_losses.batchnorm_statistics_loss(
                    *zip(*recorded)
                )
        if args.data_free_method == "dfad":
            student = self.accelerator.unwrap_model(self.model)  # not DDP: the student takes no gradient here
            student_logits = logits_of(student(**{self._student_input: images}))
            terms["adversarial"] = -generator_losses.logit_l1_distance(student_logits, teacher_logits)
        return terms

    def _batchnorm_inputs(self):
        """Within the block, `recorded` holds `(batch mean, batch variance, running mean, running variance)` of each
        teacher BatchNorm layer's input (when `batchnorm_statistics_weight > 0`)."""
        from contextlib import contextmanager

        @contextmanager
        def recording():
            recorded, handles = [], []
            if self.args.batchnorm_statistics_weight > 0:
                def hook(module, inputs, output):
                    x = inputs[0].transpose(0, 1).flatten(start_dim=1)  # (channels, batch * positions)
                    recorded.append((x.mean(dim=1), x.var(dim=1, unbiased=False), module.running_mean, module.running_var))

                handles = [m.register_forward_hook(hook) for m in batchnorm_layers(self.teacher_model)]
            try:
                yield recorded
            finally:
                for handle in handles:
                    handle.remove()

        return recording()

    def generator_step(self, step: int) -> None:
        """One Adam step of the generator on its loss (gradients averaged over processes)."""
        terms = self.generator_loss_terms(step)
        loss = sum(terms.values())
        parameters = [p for p in self.generator.parameters() if p.requires_grad]
        gradients = torch.autograd.grad(loss, parameters)
        if self.accelerator.num_processes > 1:
            for gradient in gradients:
                torch.distributed.all_reduce(gradient)
                gradient /= self.accelerator.num_processes
        for parameter, gradient in zip(parameters, gradients):
            parameter.grad = gradient
        if self.args.generator_follows_schedule and self.lr_scheduler is not None and self.args.learning_rate > 0:
            scale = self.lr_scheduler.get_last_lr()[0] / self.args.learning_rate
            for group in self.generator_optimizer.param_groups:
                group["lr"] = self.args.generator_learning_rate * scale
        self.generator_optimizer.step()
        self.generator_optimizer.zero_grad(set_to_none=True)
        self.record_loss_terms({"loss": loss, "generator": loss, **{f"generator_{k}": v for k, v in terms.items()}},
                               training=True)  # fmt: skip

    # -----------------------------------------------------------------------------------------------------------------
    # The student's step

    @property
    def _student_input(self) -> str:
        return getattr(self.accelerator.unwrap_model(self.model), "main_input_name", "pixel_values")

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:  # evaluation, on real data: the student's cross-entropy
            outputs = model(**{k: v for k, v in inputs.items() if k != LABELS})
            logits = logits_of(outputs)
            loss = F.cross_entropy(logits, inputs[LABELS]) if LABELS in inputs else logits.new_zeros(())
            return (loss, {"logits": logits}) if return_outputs else loss
        # One draw per micro-batch: with gradient accumulation, each of a step's batches is a new one.
        accumulation = self.args.gradient_accumulation_steps
        micro, self._calls = self._calls % accumulation, self._calls + 1
        step = self.state.global_step * accumulation + micro
        if self.generator is not None and micro == 0 and self.state.global_step % self.args.student_steps_per_generator_step == 0:
            self.generator_step(step)
        with torch.no_grad():
            images, _ = self.synthesise(step, "student")
            teacher_logits = logits_of(self._teacher_outputs(images, hidden=False)).float()
        self._watch_diversity(step, images, teacher_logits)
        images, teacher_logits = self._with_replay(step, images, teacher_logits)
        student_logits = logits_of(model(**{self._student_input: images}))
        if self.args.student_loss == "l1":
            loss = generator_losses.logit_l1_distance(student_logits, teacher_logits)
        else:
            loss = generator_losses.kl_to_teacher(student_logits, teacher_logits, self.args.temperature)
        self.record_loss_terms({"loss": loss, self.args.student_loss: loss}, training=True)
        return (loss, {"logits": student_logits}) if return_outputs else loss

    def _with_replay(self, step: int, images: torch.Tensor, teacher_logits: torch.Tensor):
        """With `replay_batches` > 0 (Fast-DFKD's memory), the batch plus one past synthetic batch drawn at random
        from the last `replay_batches` (with the teacher's logits of then: the teacher is frozen)."""
        if not self.args.replay_batches:
            return images, teacher_logits
        pool = self.replay_pool
        if pool:
            index = int(torch.randint(len(pool), (1,), generator=self._random(step, "replay")))
            past_images, past_logits = pool[index]
        pool.append((images.detach(), teacher_logits.detach()))
        del pool[: -self.args.replay_batches]
        if len(pool) == 1:
            return images, teacher_logits
        return torch.cat([images, past_images]), torch.cat([teacher_logits, past_logits])

    # -----------------------------------------------------------------------------------------------------------------
    # Collapse guard

    def _watch_diversity(self, step: int, images: torch.Tensor, teacher_logits: torch.Tensor) -> None:
        """Log the batch's diversity; after `collapse_patience` collapsed batches in a row, restore the generator."""
        entropy = generator_losses.class_histogram_entropy(teacher_logits.argmax(dim=-1), self.num_classes)
        distance = generator_losses.mean_pairwise_distance(images[:256])
        window, device = self._metrics["train"], images.device  # logged beside the loss terms, averaged alike
        window["diversity_class_entropy"].append(torch.tensor(entropy, device=device))
        window["diversity_pairwise_distance"].append(torch.tensor(distance, device=device))
        window["collapses"].append(torch.tensor(float(self.guard["collapses"]), device=device))
        if self.generator is None or not self.args.collapse_guard:
            return
        guard, args = self.guard, self.args
        if guard["reference_distance"] is None:
            guard["reference_distance"] = distance
        # Identical images are collapsed whatever the first batch was (a generator may start collapsed). A single-class
        # batch counts only when `collapse_min_class_entropy` > 0 and the generator has shown twice that entropy:
        # DFAD's and a conditional generator's early batches often hold one class, which is no collapse.
        floor = max(args.collapse_min_distance_ratio * guard["reference_distance"], 1e-3)
        lost_classes = entropy < args.collapse_min_class_entropy <= guard["best_class_entropy"] / 2
        collapsed = distance < floor or lost_classes
        guard["best_class_entropy"] = max(guard["best_class_entropy"], entropy)
        if not collapsed:
            guard["collapsed_run"] = 0
            # A new good state once the generator has stayed good for `collapse_patience` steps since the last one
            # (or the last restore): a state just before a collapse would be restored again and again.
            if guard["snapshot_step"] is None or step - guard["snapshot_step"] >= args.collapse_patience:
                guard["snapshot"] = self._generator_state()
                guard["snapshot_step"], guard["restores_of_snapshot"] = step, 0
            return
        guard["collapsed_run"] += 1
        if guard["collapsed_run"] >= args.collapse_patience:
            self._restore_generator(step, entropy, distance)

    def _generator_state(self) -> dict[str, Any]:
        return {"generator": copy.deepcopy(self.generator.state_dict()),
                "optimizer": copy.deepcopy(self.generator_optimizer.state_dict())}  # fmt: skip

    def _restore_generator(self, step: int, entropy: float, distance: float) -> None:
        guard = self.guard
        guard["collapses"] += 1
        guard["collapsed_run"] = 0
        seen = (f"class entropy {entropy:.3f} (min {self.args.collapse_min_class_entropy}), pairwise distance "
                f"{distance:.4f} (first batch {guard['reference_distance']:.4f})")  # fmt: skip
        if guard["snapshot"] is not None and guard["restores_of_snapshot"] < 2:
            self.generator.load_state_dict(guard["snapshot"]["generator"])
            self.generator_optimizer.load_state_dict(guard["snapshot"]["optimizer"])
            guard["restores_of_snapshot"] += 1
            action = f"restored its state of step {guard['snapshot_step']}"
            guard["snapshot_step"] = step  # kept, but no newer one before `collapse_patience` good steps
        else:  # no good state, or it collapsed again from it: start afresh
            self.generator.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
            self.generator_optimizer.state.clear()
            guard["snapshot"], guard["snapshot_step"], guard["restores_of_snapshot"] = None, step, 0
            action = "re-initialised it and its optimizer"
        logger.warning(
            f"Data-free collapse guard: the generator collapsed at step {step} ({self.args.collapse_patience} batches "
            f"in a row; last: {seen}); {action} (collapse {guard['collapses']})."
        )

    # -----------------------------------------------------------------------------------------------------------------
    # Logging, saving, resuming

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.generator is not None and self.args.save_generator and self.args.should_save:
            self.generator.save_pretrained(os.path.join(output_dir, GENERATOR_DIR))

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self.generator is None or not self.args.should_save:
            return
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        state = {**self._generator_state(), "guard": dict(self.guard), "replay": [list(pair) for pair in self.replay_pool]}
        torch.save(state, os.path.join(folder, STATE_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.generator is None:
            return
        path = os.path.join(resume_from_checkpoint, STATE_NAME)
        if not os.path.isfile(path):  # a finished stage's directory: its saved generator, if any (no optimizer)
            saved = os.path.join(resume_from_checkpoint, GENERATOR_DIR)
            if os.path.isdir(saved):
                self.generator.load_state_dict(GeneratorModel.from_pretrained(saved).state_dict())
            else:
                logger.warning(f"{resume_from_checkpoint} holds neither {STATE_NAME} nor {GENERATOR_DIR}/: the "
                               "generator is not restored (a checkpoint of another kind of run?).")  # fmt: skip
            return
        state = torch.load(path, map_location=self.accelerator.device, weights_only=True)
        self.generator.load_state_dict(state["generator"])
        self.generator_optimizer.load_state_dict(state["optimizer"])
        self.guard.update(state["guard"])
        self.replay_pool[:] = [tuple(pair) for pair in state.get("replay", [])]

    @torch.no_grad()
    def sample_images(self, count: int = 64, seed: int = 0) -> torch.Tensor:
        """`count` synthetic images in pixels ([0, 1]), for display; the run's random streams are untouched."""
        if self.generator is None:
            images, _ = self.synthesise(-1 - seed, "samples", batch_size=count)
            return (images - images.amin()) / (images.amax() - images.amin()).clamp_min(1e-6)
        buffers = copy.deepcopy(dict(self.generator.named_buffers()))  # BatchNorm's running statistics: untouched
        images, _ = self.synthesise(-1 - seed, "samples", batch_size=count)
        for name, value in buffers.items():
            self.generator.get_buffer(name).copy_(value)
        return self.generator.to_pixels(images)
