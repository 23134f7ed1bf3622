"""Data-free distillation: the generator's terms against their formulas, the trainer (teacher untouched, generator and
student trained, resume, collapse guard), the activation statistics file, the refusals, and the example on a dataset
that has no training split."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from transformers import AutoModelForImageClassification, TrainerCallback

from hf_kd.data import InMemoryDataset
from hf_kd.losses import generator as losses
from hf_kd.models import (
    GeneratorConfig,
    GeneratorModel,
    MLPConfig,
    MLPForImageClassification,
)
from hf_kd.teacher.statistics import (
    ActivationStatistics,
    record_activation_statistics,
)
from hf_kd.training.configuration_data_free import DataFreeConfig
from hf_kd.training.data_free import STATE_NAME, DataFreeDistillationTrainer

NUM_LABELS = 4


def tiny_mlp(seed: int, hidden_sizes=(32, 16)) -> MLPForImageClassification:
    torch.manual_seed(seed)
    return MLPForImageClassification(MLPConfig(image_size=8, hidden_sizes=list(hidden_sizes), num_labels=NUM_LABELS))


def data_free_args(tmp_path, method: str = "dafl", **changes) -> DataFreeConfig:
    values = dict(
        output_dir=str(tmp_path / method), data_free_method=method, max_steps=6, per_device_train_batch_size=16,
        learning_rate=1e-2, generator_hidden_size=16, logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=True, disable_tqdm=True, seed=3,
    )  # fmt: skip
    return DataFreeConfig(**{**values, **changes})


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def small_statistics(teacher) -> ActivationStatistics:
    torch.manual_seed(0)
    data = InMemoryDataset({"pixel_values": torch.randn(64, 1, 8, 8), "labels": torch.arange(64) % NUM_LABELS})
    return record_activation_statistics(teacher, data, batch_size=16)


# ---------------------------------------------------------------------------------------------------------------------
# The terms, against their formulas written out


def test_dafl_terms_match_their_formulas():
    torch.manual_seed(0)
    logits, features = torch.randn(8, 5), torch.randn(8, 7)
    p = torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True)
    predicted = logits.argmax(1)
    one_hot = -torch.log(p[torch.arange(8), predicted]).mean()
    assert torch.allclose(losses.one_hot_loss(logits), one_hot)
    p_mean = p.mean(0)
    assert torch.allclose(losses.information_entropy_loss(logits), (p_mean * torch.log(p_mean) / math.log(10)).sum())
    assert torch.allclose(losses.activation_loss(features), -features.abs().sum() / features.numel())


def test_dfad_distance_and_kl_match_their_formulas():
    torch.manual_seed(0)
    s, t = torch.randn(6, 4), torch.randn(6, 4)
    assert torch.allclose(losses.logit_l1_distance(s, t), (s - t).abs().sum() / 24)
    T = 2.0
    p_t = torch.softmax(t / T, 1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(s / T, 1))).sum(1).mean() * T**2
    assert torch.allclose(losses.kl_to_teacher(s, t, T), kl)


def test_information_entropy_is_extreme_at_a_uniform_histogram():
    uniform = torch.zeros(10, 10)  # every answer uniform: p_mean uniform
    balanced = torch.eye(10) * 20  # one confident answer per class: p_mean uniform too
    assert torch.allclose(losses.information_entropy_loss(uniform), torch.tensor(-1.0))  # -log10(10)
    assert torch.allclose(losses.information_entropy_loss(balanced), torch.tensor(-1.0), atol=1e-6)
    for seed in range(5):
        torch.manual_seed(seed)
        assert losses.information_entropy_loss(torch.randn(32, 10) * 3) > -1.0
    one_class = torch.zeros(10, 10)
    one_class[:, 0] = 50
    assert torch.allclose(losses.information_entropy_loss(one_class), torch.tensor(0.0), atol=1e-5)


def test_activation_statistics_loss_matches_its_formula():
    torch.manual_seed(0)
    acts, labels = torch.randn(12, 3), torch.tensor([0, 1, 2] * 3 + [0, 0, 1])
    means, variances = torch.randn(4, 3), torch.rand(4, 3) + 0.1  # class 3 absent from the batch
    scale = variances.mean()
    terms = []
    for c in (0, 1, 2):
        members = acts[labels == c]
        m, s = members.mean(0), members.std(0, unbiased=False)
        terms.append((((m - means[c]) ** 2 + (s - variances[c].sqrt()) ** 2) / scale).mean())
    assert torch.allclose(losses.activation_statistics_loss(acts, labels, means, variances), torch.stack(terms).mean())


def test_batchnorm_statistics_loss_and_diversity_match_their_formulas():
    m, v, rm, rv = torch.randn(3), torch.rand(3), torch.randn(3), torch.rand(3)
    expected = ((m - rm) ** 2).sum().sqrt() + ((v - rv) ** 2).sum().sqrt()
    assert torch.allclose(losses.batchnorm_statistics_loss([m], [v], [rm], [rv]), expected)
    assert losses.class_histogram_entropy(torch.tensor([0, 1, 2, 3]), 4) == pytest.approx(1.0)
    assert losses.class_histogram_entropy(torch.tensor([2, 2, 2]), 4) == 0.0
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert losses.mean_pairwise_distance(x) == pytest.approx(5.0 / math.sqrt(2))
    assert losses.mean_pairwise_distance(torch.ones(5, 9)) == 0.0


# ---------------------------------------------------------------------------------------------------------------------
# The trainer


@pytest.mark.parametrize("method", ["noise", "dafl", "dfad", "statistics"])
def test_training_moves_student_and_generator_never_the_teacher(tmp_path, method):
    teacher, student = tiny_mlp(0), tiny_mlp(1, hidden_sizes=(8,))
    teacher_before, student_before = snapshot(teacher), snapshot(student)
    statistics = small_statistics(teacher) if method == "statistics" else None
    trainer = DataFreeDistillationTrainer(
        model=student, teacher_model=teacher, args=data_free_args(tmp_path, method), activation_statistics=statistics
    )
    generator_before = snapshot(trainer.generator) if trainer.generator is not None else None
    trainer.train()
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())  # bitwise
    assert any(not torch.equal(student_before[k], v) for k, v in student.state_dict().items())
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 6 and all("diversity_class_entropy" in entry for entry in logs)
    student_term = "loss_l1" if method == "dfad" else "loss_kl"
    assert all(math.isfinite(entry[student_term]) for entry in logs)
    if method == "noise":
        assert trainer.generator is None
        return
    moved = [k for k, v in trainer.generator.state_dict().items() if not torch.equal(generator_before[k], v)]
    assert any(k.endswith("weight") for k in moved)
    expected = {"dafl": "loss_generator_one_hot", "dfad": "loss_generator_adversarial",
                "statistics": "loss_generator_statistics"}[method]  # fmt: skip
    assert expected in logs[0]


def test_dfad_steps_the_generator_once_per_five_student_steps(tmp_path):
    trainer = DataFreeDistillationTrainer(
        model=tiny_mlp(1, (8,)), teacher_model=tiny_mlp(0), args=data_free_args(tmp_path, "dfad", max_steps=10)
    )
    trainer.train()
    generator_logs = [entry for entry in trainer.state.log_history if "loss_generator" in entry]
    assert [entry["step"] for entry in generator_logs] == [1, 6]


class LearningRates(TrainerCallback):
    """The student's learning rate during each step, and the generator's after it."""

    def __init__(self):
        self.trainer, self.student, self.generator = None, [], []

    def on_step_begin(self, args, state, control, **kwargs):
        self.student.append(self.trainer.lr_scheduler.get_last_lr()[0])

    def on_step_end(self, args, state, control, **kwargs):
        self.generator.append(self.trainer.generator_optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("follows", [True, False])
def test_the_generator_follows_the_students_schedule(tmp_path, follows):
    """DFAD's reference decays the generator's learning rate with the student's; a constant one is the option."""
    rates = LearningRates()
    args = data_free_args(tmp_path, "dfad", max_steps=6, student_steps_per_generator_step=1, lr_scheduler_type="linear",
                          generator_learning_rate=0.5, generator_follows_schedule=follows)  # fmt: skip
    trainer = DataFreeDistillationTrainer(model=tiny_mlp(1, (8,)), teacher_model=tiny_mlp(0), args=args, callbacks=[rates])
    rates.trainer = trainer
    trainer.train()
    expected = [0.5 * lr / args.learning_rate for lr in rates.student] if follows else [0.5] * 6
    assert rates.student[0] > rates.student[-1] > 0  # the student's rate decayed
    assert rates.generator == pytest.approx(expected)


class KillAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("killed")


def test_resume_after_a_kill_equals_the_uninterrupted_run(tmp_path):
    def run(output, callbacks=(), resume=None):
        args = data_free_args(tmp_path, "dafl", output_dir=str(tmp_path / output), max_steps=8, save_strategy="steps",
                              save_steps=4, generator_learning_rate=0.01, replay_batches=3)  # fmt: skip
        trainer = DataFreeDistillationTrainer(
            model=tiny_mlp(1, (8,)), teacher_model=tiny_mlp(0), args=args, callbacks=list(callbacks)
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    whole = run("whole")
    with pytest.raises(KeyboardInterrupt):
        run("killed", [KillAt(6)])
    assert (tmp_path / "killed" / "checkpoint-4" / STATE_NAME).is_file()
    resumed = run("killed", resume=str(tmp_path / "killed" / "checkpoint-4"))
    assert len(resumed.replay_pool) == 3
    for a, b in ((whole.model, resumed.model), (whole.generator, resumed.generator)):
        for name, tensor in a.state_dict().items():
            assert torch.equal(tensor, b.state_dict()[name]), name
    saved = GeneratorModel.from_pretrained(tmp_path / "whole" / "checkpoint-8" / "generator")
    assert all(torch.equal(v, whole.generator.state_dict()[k]) for k, v in saved.state_dict().items())


def test_collapse_guard_fires_on_a_collapsed_generator(tmp_path, caplog):
    args = data_free_args(tmp_path, "dafl", max_steps=12, collapse_patience=3, generator_learning_rate=0.0)
    generator = GeneratorModel(GeneratorConfig(latent_dim=100, hidden_size=16, image_shape=[1, 8, 8]))
    with torch.no_grad():  # forced collapse: the last layer ignores z, every image is the same
        generator.body[-1].weight.zero_()
    trainer = DataFreeDistillationTrainer(model=tiny_mlp(1, (8,)), teacher_model=tiny_mlp(0), args=args,
                                          generator=generator)  # fmt: skip
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert trainer.guard["collapses"] >= 1
    assert any("collapse guard" in record.getMessage() for record in caplog.records)
    assert any("re-initialised" in record.getMessage() for record in caplog.records)  # no good state to go back to
    images, _ = trainer.synthesise(100, "check")
    assert losses.mean_pairwise_distance(images) > 0.1  # diverse again after the reset
    logs = [entry for entry in trainer.state.log_history if "collapses" in entry]
    assert logs[0]["diversity_pairwise_distance"] == pytest.approx(0.0, abs=1e-6) and logs[-1]["collapses"] >= 1


# ---------------------------------------------------------------------------------------------------------------------
# Activation statistics, refusals


def test_statistics_file_round_trips_with_the_teacher(tmp_path):
    teacher = tiny_mlp(0)
    statistics = small_statistics(teacher)
    assert statistics.layers == ["hidden_states.1", "hidden_states.2", "hidden_states.3", "hidden_states.4", "logits"]
    assert statistics.means["logits"].shape == (NUM_LABELS, NUM_LABELS)
    assert statistics.class_counts.tolist() == [16] * NUM_LABELS
    teacher.save_pretrained(tmp_path / "teacher")
    statistics.save_pretrained(tmp_path / "teacher")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "teacher")
    again = ActivationStatistics.from_pretrained(loaded)
    for layer in statistics.layers:
        assert torch.equal(again.means[layer], statistics.means[layer])
        assert torch.equal(again.variances[layer], statistics.variances[layer])
    # The per-class mean of the logits, recomputed by hand.
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 8, 8), torch.arange(64) % NUM_LABELS
    with torch.no_grad():
        logits = teacher(pixel_values=x).logits
    assert torch.allclose(again.means["logits"][1], logits[y == 1].mean(0), atol=1e-5)
    assert torch.allclose(again.variances["logits"][1], logits[y == 1].var(0, unbiased=False), atol=1e-4)


def test_statistics_without_recorded_statistics_says_how_to_record_them(tmp_path):
    tiny_mlp(0).save_pretrained(tmp_path / "teacher")
    teacher = AutoModelForImageClassification.from_pretrained(tmp_path / "teacher")
    with pytest.raises(FileNotFoundError, match="record_activation_statistics"):
        DataFreeDistillationTrainer(model=tiny_mlp(1, (8,)), teacher_model=teacher,
                                    args=data_free_args(tmp_path, "statistics"))  # fmt: skip


def test_refusals_name_what_is_missing(tmp_path, tiny_task):
    from conftest import make_student, make_teacher

    with pytest.raises(ValueError, match="input_shape"):
        DataFreeDistillationTrainer(model=make_student(), teacher_model=make_teacher(), args=data_free_args(tmp_path))
    with pytest.raises(ValueError, match="no BatchNorm"):
        DataFreeDistillationTrainer(model=tiny_mlp(1, (8,)), teacher_model=tiny_mlp(0),
                                    args=data_free_args(tmp_path, batchnorm_statistics_weight=1.0))  # fmt: skip
    from transformers import BertConfig, BertForSequenceClassification

    text = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=8, num_labels=4))  # fmt: skip
    with pytest.raises(ValueError, match="image classifiers"):
        DataFreeDistillationTrainer(model=text, teacher_model=text, args=data_free_args(tmp_path))
    with pytest.raises(ValueError, match="max_steps must be > 0"):
        DataFreeConfig(output_dir=str(tmp_path), max_steps=-1)
    with pytest.raises(ValueError, match="data_free_method"):
        DataFreeConfig(output_dir=str(tmp_path), max_steps=3, data_free_method="gan")


def test_batchnorm_statistics_term_for_a_teacher_with_batchnorm(tmp_path):
    from torch import nn

    teacher = tiny_mlp(0)
    teacher.hidden_layers[0] = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32))
    teacher.hidden_layers[0][1].running_mean.normal_()
    trainer = DataFreeDistillationTrainer(model=tiny_mlp(1, (8,)), teacher_model=teacher,
                                          args=data_free_args(tmp_path, batchnorm_statistics_weight=0.5))  # fmt: skip
    terms = trainer.generator_loss_terms(0)
    assert terms["batchnorm"] > 0 and terms["batchnorm"].requires_grad


# ---------------------------------------------------------------------------------------------------------------------
# The example, on a dataset that has only its evaluation split


def _teacher_dir(tmp_path):
    from hf_kd.models import image_processor_for_preset, model_from_preset

    teacher = model_from_preset("mnist-mlp-teacher", num_labels=10)
    teacher.config.id2label = {i: f"class_{i}" for i in range(10)}
    teacher.config.label2id = {name: i for i, name in teacher.config.id2label.items()}
    teacher.save_pretrained(tmp_path / "teacher")
    image_processor_for_preset("mnist-mlp-teacher").save_pretrained(tmp_path / "teacher")
    return tmp_path / "teacher"


def _run_data_free_example(tmp_path, splits: dict, *extra: str):
    from datasets import DatasetDict
    from test_examples_image import LOCAL_ACCURACY, run_example

    DatasetDict(splits).save_to_disk(tmp_path / "data")
    output = tmp_path / "run"
    run_example(
        "distill_mnist.py", "--dataset_name", str(tmp_path / "data"), "--distillation_mode", "data_free",
        "--data_free_method", "dafl", "--teacher_model_name_or_path", str(_teacher_dir(tmp_path)),
        "--data_free_steps", "8", "--data_free_batch_size", "16", "--output_dir", str(output),
        "--metric_name_or_path", LOCAL_ACCURACY, "--latency_examples", "5", "--logging_steps", "2", *extra,
    )  # fmt: skip
    report = json.loads((output / "distillation_report.json").read_text())
    return output, report, json.loads((output / "data_free.json").read_text())


@pytest.mark.slow
def test_example_runs_on_a_dataset_without_a_train_split(tmp_path):
    from test_examples_image import make_image_dataset

    output, report, summary = _run_data_free_example(tmp_path, {"test": make_image_dataset(64, 28, "L")})
    assert [model["name"] for model in report["models"]] == ["teacher", "student_data_free"]
    assert summary["models"]["student_data_free"]["real_training_examples"] == 0
    assert summary["models"]["student_data_free"]["train_time_s"] > 0
    assert (output / "synthetic_samples.png").stat().st_size > 1000
    markdown = (output / "distillation_report.md").read_text()
    assert "Real training examples seen" in markdown and "synthetic_samples.png" in markdown
    card = (output / "student_data_free" / "README.md").read_text()
    assert "synthetic_samples.png" in card and (output / "student_data_free" / "synthetic_samples.png").is_file()
    assert (output / "generator" / "config.json").is_file() and not (output / "student_data_free" / "generator").exists()
    student, kd_size = report["models"][1], 79_510 * 4 / 1e6
    assert kd_size < student["size_mb"] < kd_size + 0.1  # the generator is not counted with the student


@pytest.mark.slow
def test_example_trains_the_ce_baseline_when_there_is_a_train_split(tmp_path):
    from test_examples_image import make_image_dataset

    splits = {"train": make_image_dataset(48, 28, "L", seed=1), "test": make_image_dataset(32, 28, "L")}
    _, report, summary = _run_data_free_example(tmp_path, splits, "--num_train_epochs", "1")
    assert [model["name"] for model in report["models"]] == ["teacher", "student_ce", "student_data_free"]
    assert summary["models"]["student_ce"]["real_training_examples"] == 48
    assert summary["models"]["student_data_free"]["real_training_examples"] == 0
