"""The experiment's stages compose: `run_distillation` over an image setup gives the examples' sequence (teacher
trained here -> distilled student -> baseline -> report -> card), with the same report as the written-out example."""

from __future__ import annotations

import json

from conftest import REPO_ROOT
from datasets import DatasetDict
from test_examples_image import make_image_dataset

from hf_kd.report.metrics import load_metric
from hf_kd.runs.arguments import parse_image_arguments
from hf_kd.runs.preparation import prepare_run
from hf_kd.runs.recipes import image_setup
from hf_kd.runs.setups import run_distillation


def test_run_distillation_composes_the_stages(tmp_path):
    data_dir = tmp_path / "data"
    splits = {"train": make_image_dataset(128, 28, "L", seed=0), "test": make_image_dataset(32, 28, "L", seed=1)}
    DatasetDict(splits).save_to_disk(data_dir)
    argv = [
        "--dataset_name", str(data_dir), "--teacher", "mnist-mlp-teacher", "--student", "mnist-mlp-student",
        "--output_dir", str(tmp_path / "run"), "--num_train_epochs", "1", "--per_device_train_batch_size", "32",
        "--precompute_teacher_logits", "--latency_examples", "3", "--no_plot", "--save_strategy", "no",
        "--report_to", "none", "--use_cpu", "--logging_steps", "1", "--metric_name_or_path", str(REPO_ROOT / "tests/metrics/accuracy"),
    ]  # fmt: skip
    data_args, experiment_args, config = parse_image_arguments(None, argv)
    with prepare_run(config, experiment_args):
        setup = image_setup(data_args, experiment_args, config)
        metric = load_metric(experiment_args.metric_name_or_path)
        report = run_distillation(setup, metric, data_args, experiment_args, config)

    assert [m.name for m in report.models] == ["teacher", "student_ce", "student_kd"]
    assert report.settings["teacher_logits"] == "precomputed"
    written = json.loads((tmp_path / "run" / "distillation_report.json").read_text())
    assert [m["name"] for m in written["models"]] == ["teacher", "student_ce", "student_kd"]
    assert (tmp_path / "run" / "student_kd" / "README.md").is_file()  # the distilled student's card
    # The baseline and the distilled student start from the same weights and see the same data: only the loss
    # differs, so their training logs differ in the distillation terms alone.
    curves = written["training_curves"]
    assert "loss_kd" in curves["student_kd"] and "loss_kd" not in curves["student_ce"]
