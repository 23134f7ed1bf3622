"""Teacher-assistant chains: each link an ordinary distillation; a finished link is loaded, not retrained."""

import shutil

import torch
from conftest import TinyConfig, TinyForSequenceClassification, make_dataset, make_student, make_teacher
from test_trainer import config

from hf_kd import DistillationTrainer
from hf_kd.runs.experiment import ModelData, Trained, distil, distil_chain


def _task():
    teacher = make_teacher()
    data = ModelData(make_dataset(teacher, 128, seed=10), make_dataset(teacher, 64, seed=11), None, None)
    return Trained("teacher", teacher, data), data


def _assistant(seed: int):
    torch.manual_seed(seed)
    return TinyForSequenceClassification(TinyConfig(hidden_size=64))


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_chain_of_one_link_is_plain_distillation(tmp_path):
    teacher, data = _task()
    links = distil_chain(make_student(), teacher, [], data, config(tmp_path / "chain", max_steps=4), None)
    plain = distil(make_student(), teacher, data, config(tmp_path / "plain", max_steps=4), None)
    assert [link.name for link in links] == ["student_kd"]
    assert not _same_weights(links[0].model, make_student())  # it trained
    assert _same_weights(links[0].model, plain.model)


def test_each_link_distils_the_previous_one(tmp_path, monkeypatch):
    teacher, data = _task()
    seen = []
    original = DistillationTrainer.__init__

    def record(self, *args, teacher_model=None, **kwargs):
        seen.append(teacher_model)
        original(self, *args, teacher_model=teacher_model, **kwargs)

    monkeypatch.setattr(DistillationTrainer, "__init__", record)
    assistant = _assistant(5)
    links = distil_chain(make_student(), teacher, [assistant], data, config(tmp_path, max_steps=2), None)
    assert [link.name for link in links] == ["assistant_1", "student_kd"]
    assert seen == [teacher.model, links[0].model]


def test_the_chain_resumes_from_a_finished_link(tmp_path, monkeypatch):
    teacher, data = _task()
    args = config(tmp_path, max_steps=3)
    first = distil_chain(make_student(), teacher, [_assistant(5)], data, args, None)
    shutil.rmtree(tmp_path / "out" / "student_kd")  # the run stopped before the last link finished
    trained = []
    original_train = DistillationTrainer.train
    monkeypatch.setattr(
        DistillationTrainer, "train", lambda self, *a, **k: trained.append(self.args.output_dir) or original_train(self, *a, **k)
    )
    fresh_assistant = _assistant(6)  # other initial weights: loading must replace them
    again = distil_chain(make_student(), teacher, [fresh_assistant], data, args, None)
    assert trained == [str(tmp_path / "out" / "student_kd")]  # the assistant was loaded, only the student trained
    assert _same_weights(again[0].model, first[0].model)
    assert again[0].train_time_s == first[0].train_time_s
    assert _same_weights(again[1].model, first[1].model)  # the same teacher for the last link: the same student


def test_lineage_of_a_run():
    from hf_kd.report.measure import model_label
    from hf_kd.report.report import lineage_of

    assert lineage_of(["teacher", "student_ce", "student_kd"]) is None  # one teacher, no assistant: the table says it
    chain = lineage_of(["teacher", "assistant_1", "assistant_2", "student_ce", "student_kd_direct", "student_kd"])
    assert chain == {"teachers": ["teacher"], "assistants": ["assistant_1", "assistant_2"], "student": "student_kd"}
    assert [model_label(n) for n in ("teacher_2", "assistant_1", "student_kd_direct", "peer_0")] == [
        "Teacher 2", "Assistant 1 (KD)", "Student (KD, direct from the teacher)", "peer_0"
    ]  # fmt: skip
