"""The examples' command line: hf_kd's own arguments come first in --help, grouped, before the Trainer's."""

from __future__ import annotations

import pytest

from hf_kd.runs.arguments import DataArguments, ExperimentArguments, TextArguments, build_parser, parse_image_arguments
from hf_kd.training.configuration_distillation import DistillationConfig


def _help(dataclass_types) -> str:
    return build_parser(dataclass_types).format_help()


@pytest.mark.parametrize(
    "dataclass_types",
    [
        (DataArguments, ExperimentArguments, DistillationConfig),
        (DataArguments, ExperimentArguments, TextArguments, DistillationConfig),
    ],
)
def test_hf_kd_arguments_come_before_the_trainers(dataclass_types):
    text = _help(dataclass_types)
    titles = ["\ndata (hf_kd):", "\nexperiment (hf_kd)", "\ndistillation (hf_kd):", "\ntraining (transformers.TrainingArguments):"]
    positions = [text.index(title) for title in titles]
    assert positions == sorted(positions)
    distillation, training = positions[2], positions[3]
    for own in (
        "--temperature",
        "--alpha",
        "--loss_type",
        "--teacher_model_name_or_path",
        "--precompute_teacher_logits",
    ):
        assert distillation < text.index(f"\n  {own} ") < training, own
    for inherited in ("--learning_rate", "--num_train_epochs", "--per_device_train_batch_size", "--seed"):
        assert text.index(f"\n  {inherited} ") > training, inherited
    assert text.index("\n  --dataset_name ") < text.index("\n  --teacher ") < distillation
    # The usage line no longer lists every option before the groups.
    assert text.index("data (hf_kd):") < 40 * 80


def test_a_no_switch_does_not_repeat_the_help_of_its_opposite():
    text = _help((DataArguments, ExperimentArguments, DistillationConfig))
    no_plot = text[text.index("--no_plot") : text.index("--no_plot") + 200]
    assert "Turn off --plot." in no_plot and "Draw" not in no_plot and "(default: False)" not in no_plot
    # and the switch still works
    _, experiment_args, _ = parse_image_arguments(
        None, ["--dataset_name", "d", "--student", "mnist-mlp-student", "--teacher", "mnist-mlp-teacher", "--no_plot"]
    )
    assert experiment_args.plot is False
    _, experiment_args, _ = parse_image_arguments(
        None, ["--dataset_name", "d", "--student", "mnist-mlp-student", "--teacher", "mnist-mlp-teacher"]
    )
    assert experiment_args.plot is True
