"""Online and self distillation as stages and in the image example: born-again chains, the EMA stage, mutual peers
in the report, and mutual learning in 2 gloo processes against 1 with the same global batch."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import accelerate_launch, assert_trained, make_student
from datasets import DatasetDict
from safetensors.torch import load_file
from test_examples_image import LOCAL_ACCURACY, load_example, make_image_dataset

from hf_kd import DistillationConfig
from hf_kd.runs.experiment import ModelData, Trained
from hf_kd.runs.online import born_again, distil_from_ema

ARGS = {
    "per_device_train_batch_size": 32, "num_train_epochs": 1, "learning_rate": 1e-2, "logging_steps": 4,
    "save_strategy": "no", "report_to": "none", "seed": 0, "dataloader_pin_memory": False, "disable_tqdm": True,
    "temperature": 2.0,
}  # fmt: skip


def test_born_again_generations_each_distil_the_previous_one(tmp_path, tiny_task):
    _, train, test = tiny_task
    data = ModelData(train, test, None, None)
    config = DistillationConfig(output_dir=str(tmp_path), **ARGS)
    first = Trained("student_ce", make_student(seed=5), data)
    chain = born_again(first, lambda: make_student(seed=6), data, config, None, generations=3)
    assert [run.name for run in chain] == ["generation_1", "generation_2", "generation_3"]
    for teacher, run in zip([first, *chain], chain):
        assert run.trainer.teacher_model is teacher.model  # generation g learns from generation g - 1
    assert len({id(run.model) for run in chain}) == 3


def test_born_again_from_the_ensemble_of_earlier_generations(tmp_path, tiny_task):
    _, train, test = tiny_task
    data = ModelData(train, test, None, None)
    config = DistillationConfig(output_dir=str(tmp_path), **ARGS)
    first = Trained("student_ce", make_student(seed=5), data)
    chain = born_again(first, lambda: make_student(seed=6), data, config, None, generations=2, ensemble=True)
    assert chain[0].trainer.teacher_model is first.model
    members = list(chain[1].trainer.teacher_model.teachers)
    assert members[0] is first.model and members[1] is chain[0].model


def test_ema_stage_turns_precompute_off_and_updates_its_teacher(tmp_path, tiny_task):
    _, train, test = tiny_task
    config = DistillationConfig(output_dir=str(tmp_path), precompute_teacher_logits=True, **ARGS)
    student = make_student(seed=7)
    initial = {name: value.clone() for name, value in student.state_dict().items()}
    run = distil_from_ema(student, ModelData(train, test, None, None), config, None, decay=0.5)
    teacher = run.trainer.teacher_model
    assert "teacher_logits" not in run.trainer.train_dataset.column_names
    assert not any(torch.equal(teacher.state_dict()[name], initial[name]) for name in initial if "weight" in name)


@pytest.fixture
def image_data(tmp_path):
    data_dir = tmp_path / "data"
    DatasetDict(
        {"train": make_image_dataset(96, 28, "L", seed=0), "test": make_image_dataset(32, 28, "L", seed=1)}
    ).save_to_disk(data_dir)
    return data_dir


@pytest.mark.parametrize(
    ("mode", "extra", "names"),
    [
        ("born_again", ["--generations", "2"], ["student_ce", "generation_1", "generation_2"]),
        ("ema", [], ["student_ce", "student_ema"]),
    ],
)
@pytest.mark.slow
def test_example_modes_report_every_model_beside_the_baseline(tmp_path, image_data, mode, extra, names):
    output_dir = tmp_path / mode
    argv = ["--dataset_name", str(image_data), "--output_dir", str(output_dir), "--num_train_epochs", "1",
            "--metric_name_or_path", LOCAL_ACCURACY, "--latency_examples", "2", "--no_plot",
            "--distillation_mode", mode, *extra]  # fmt: skip
    load_example("distill_mnist.py").main(argv)
    report = json.loads((output_dir / "distillation_report.json").read_text())
    assert [model["name"] for model in report["models"]] == names
    assert report["teacher"] == f"none ({mode})"
    assert not (output_dir / "teacher").exists()  # no teacher trained first


def launch_mutual(num_processes: int, data_dir, output_dir, global_batch: int = 16) -> None:
    accelerate_launch(
        num_processes, "examples/distill_mnist.py",
        "--use_cpu", "--dataset_name", str(data_dir), "--output_dir", str(output_dir),
        "--per_device_train_batch_size", str(global_batch // num_processes), "--num_train_epochs", "2",
        "--distillation_mode", "mutual", "--peers", "teacher,student", "--skip_baseline", "--logging_steps", "2",
        "--metric_name_or_path", LOCAL_ACCURACY, "--latency_examples", "2", "--no_plot",
        env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )  # fmt: skip


@pytest.mark.slow
def test_mutual_learning_in_two_processes_equals_one_with_the_same_global_batch(tmp_path, image_data):
    launch_mutual(1, image_data, tmp_path / "one")
    launch_mutual(2, image_data, tmp_path / "two")
    for peer in ("peer_0", "peer_1"):
        one = load_file(tmp_path / "one" / "mutual" / peer / "model.safetensors")
        two = load_file(tmp_path / "two" / "mutual" / peer / "model.safetensors")
        assert one.keys() == two.keys()
        for name in one:  # DDP averages the halves' gradients: the same updates, up to float summation order
            torch.testing.assert_close(two[name], one[name], rtol=1e-3, atol=1e-4, msg=f"{peer}.{name}")
    report = json.loads((tmp_path / "two" / "distillation_report.json").read_text())
    assert report["settings"]["world_size"] == 2
    for run in ("one", "two"):  # both trained: equal weights alone could be two runs that never moved
        assert_trained(json.loads((tmp_path / run / "distillation_report.json").read_text()), ["mutual/peer_0"])
    assert [model["name"] for model in report["models"]] == ["mutual/peer_0", "mutual/peer_1"]
