"""The image example with many teachers: an ensemble of loaded teachers, distilled through a teacher assistant; the
report lists every model, the card records the lineage in text and metadata."""

from __future__ import annotations

import json

import pytest
import yaml
from datasets import DatasetDict
from test_examples_image import LOCAL_ACCURACY, load_example, make_image_dataset

from hf_kd.report.measure import model_label
from hf_kd.runs.recipes import build_image_model

pytestmark = pytest.mark.slow  # launches and whole-example runs


def test_ensemble_through_an_assistant(tmp_path):
    data_dir = tmp_path / "data"
    DatasetDict(
        {"train": make_image_dataset(128, 28, "L", seed=0), "test": make_image_dataset(32, 28, "L", seed=1)}
    ).save_to_disk(data_dir)
    names = [f"class_{i}" for i in range(10)]
    teachers = []
    for seed, preset in enumerate(("mnist-mlp-teacher", "mnist-mlp-student")):  # two architectures
        path = tmp_path / f"teacher{seed}"
        build_image_model(preset, names, seed).save_pretrained(path)
        teachers.append(str(path))
    out = tmp_path / "run"
    load_example("distill_image_classification.py").main(argv=[
        "--dataset_name", str(data_dir), "--student", "mnist-mlp-student", "--output_dir", str(out),
        "--teacher_model_name_or_path", *teachers, "--teacher_weights", "3", "1", "--assistants", "mnist-mlp-teacher",
        "--num_train_epochs", "1", "--metric_name_or_path", LOCAL_ACCURACY, "--latency_examples", "3", "--no_plot",
        "--report_to", "none", "--torch_num_threads", "1",
    ])  # fmt: skip
    report = json.loads((out / "distillation_report.json").read_text())
    rows = [model["name"] for model in report["models"]]
    assert rows == ["ensemble", "teacher_0", "teacher_1", "assistant_1", "student_ce", "student_kd_direct", "student_kd"]
    assert [model["label"] for model in report["models"]][:4] == ["Teacher ensemble", "Teacher 0", "Teacher 1",
                                                                  "Assistant 1 (KD)"]  # fmt: skip
    ensemble = report["models"][0]
    assert ensemble["parameters"] == sum(report["models"][k]["parameters"] for k in (1, 2))
    assert report["lineage"] == {
        "teachers": ["teacher_0", "teacher_1"], "assistants": ["assistant_1"], "student": "student_kd",
        "ensemble_method": "mean_probs", "teacher_weights": [3.0, 1.0],
    }  # fmt: skip
    card = (out / "student_kd" / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["distillation"]["assistants"] == ["assistant_1"]
    assert header["distillation"]["teacher"] == ", ".join(teachers)
    lineage = next(line for line in card.splitlines() if line.startswith("Lineage:"))
    assert "an ensemble of 2 teachers (Teacher 0 (" in lineage and "`mean_probs`" in lineage
    assert f"→ {model_label('assistant_1')} (" in lineage and lineage.count("→") == 2
    # The table gives each model of the chain its own column: the ensemble as the teacher (not the last assistant,
    # the student's trainer's teacher), then the assistant, then the student.
    table = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in card.splitlines() if line.startswith("| ")}  # fmt: skip
    params = {model["name"]: f"{model['parameters']:,}" for model in report["models"]}
    assert table[""] == ["Teacher", "Assistant 1 (KD)", "Student"]
    assert table["Parameters"] == [params["ensemble"], params["assistant_1"], params["student_kd"]]
    assert table["Architecture"][:2] == [
        "`TeacherEnsemble` (hf_kd_teacher_ensemble)", "`MLPForImageClassification` (hf_kd_mlp)"
    ]  # fmt: skip
    assert params["assistant_1"] != params["ensemble"]
