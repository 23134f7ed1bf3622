"""Black-box teachers: the project's own server (a real saved classifier on loopback) as the teacher, the resumable
annotation job (killed with SIGKILL and resumed), retries on 429, malformed answers, and training on answers."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, make_dataset, make_student, make_teacher

pytest.importorskip("fastapi", reason="the server needs the serve extra: pip install 'hf_kd[serve]'")
pytest.importorskip("uvicorn", reason="the server needs the serve extra: pip install 'hf_kd[serve]'")
from hf_kd.teacher.remote import http_module

httpx = http_module()  # huggingface_hub's HTTP client library
import PIL.Image
from datasets import Dataset, load_from_disk
from datasets import Image as ImageFeature

from hf_kd import DistillationConfig, DistillationTrainer
from hf_kd.batch import TEACHER_TOP_K_INDICES, TEACHER_TOP_K_PROBS
from hf_kd.models import image_processor_for_preset, model_from_preset
from hf_kd.serve import serving
from hf_kd.teacher.annotate import annotate_with_teacher
from hf_kd.teacher.classifier import teacher_from_model
from hf_kd.teacher.remote import (
    TeacherAnswerError,
    TeacherRequestError,
    teacher_from_callable,
    teacher_from_url,
)

LABELS = [f"class_{i}" for i in range(10)]  # the class names of test_examples_image's generated datasets


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _images(n: int, seed: int) -> Dataset:
    """n distinct random 28x28 grayscale images (distinct across seeds, so the server's per-input counts stay apart)."""
    rng = np.random.RandomState(seed)
    images = [PIL.Image.fromarray(rng.randint(0, 256, (28, 28), dtype=np.uint8)) for _ in range(n)]
    return Dataset.from_dict({"image": images}).cast_column("image", ImageFeature())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A real saved classifier (the MNIST MLP student preset) served by `python -m hf_kd.serve` on loopback."""
    model_dir = tmp_path_factory.mktemp("served") / "model"
    torch.manual_seed(0)
    id2label = dict(enumerate(LABELS))
    model_from_preset("mnist-mlp-student", id2label=id2label, label2id={v: k for k, v in id2label.items()}).save_pretrained(model_dir)  # fmt: skip
    image_processor_for_preset("mnist-mlp-student").save_pretrained(model_dir)
    with serving(model_dir, "--enable_fault_injection") as url:
        yield url, model_dir


def _stats(url):
    return httpx.get(f"{url}/stats").json()


def _faults(url, **faults):
    httpx.post(f"{url}/faults", json=faults).raise_for_status()


def test_server_answers_as_the_model_does_in_process(served, tmp_path):
    url, model_dir = served
    data = _images(40, seed=1)
    before = _stats(url)
    over_http = annotate_with_teacher(data, teacher_from_url(url, LABELS, "top_k", 3), "image", tmp_path / "http", batch_size=16)  # fmt: skip
    in_process = annotate_with_teacher(data, teacher_from_model(model_dir, "top_k", 3), "image", tmp_path / "local", batch_size=16)  # fmt: skip
    assert _stats(url)["examples"] - before["examples"] == 40  # one query per example, counted at the server
    assert over_http[TEACHER_TOP_K_INDICES] == in_process[TEACHER_TOP_K_INDICES]
    np.testing.assert_allclose(over_http[TEACHER_TOP_K_PROBS], in_process[TEACHER_TOP_K_PROBS], rtol=1e-5)
    probs = np.array(over_http[TEACHER_TOP_K_PROBS])
    assert (np.diff(probs, axis=1) <= 0).all() and (probs.sum(1) <= 1 + 1e-5).all()


def test_inference_client_speaks_the_same_protocol(served, monkeypatch):
    from huggingface_hub import InferenceClient, constants

    # The Hub's session refuses every URL in offline mode, loopback included (why teacher_from_url has its own client).
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    url, _ = served
    png = _images(1, seed=2).with_format("arrow")[0]["image"][0]["bytes"].as_py()
    answer = InferenceClient(url).image_classification(png, top_k=2)
    assert len(answer) == 2 and answer[0].label in LABELS and 0 < answer[0].score <= 1


_ANNOTATE_SCRIPT = """
import sys
from datasets import load_from_disk
from hf_kd.teacher.annotate import annotate_with_teacher
from hf_kd.teacher.remote import teacher_from_url
data = load_from_disk(sys.argv[1])
teacher = teacher_from_url(sys.argv[2], [f"class_{i}" for i in range(10)], "top_k", 3, base_wait_time=0.5, max_wait_time=2)
annotate_with_teacher(data, teacher, "image", sys.argv[3], batch_size=8, max_in_flight=2)
"""


def _shards(directory):
    return sorted(p.name for p in directory.glob("shard-*.npz")) if directory.exists() else []


@pytest.mark.slow
def test_killed_annotation_resumes_without_asking_twice(served, tmp_path):
    url, _ = served
    _images(96, seed=3).save_to_disk(tmp_path / "data")
    data = load_from_disk(tmp_path / "data")  # as the job's process reads it: the same fingerprint
    job = tmp_path / "job"
    before = _stats(url)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    _faults(url, budget=4)  # the server answers 4 requests (32 examples), then refuses with 503 until released
    worker = subprocess.Popen([sys.executable, "-c", _ANNOTATE_SCRIPT, str(tmp_path / "data"), url, str(job)], env=env)
    try:
        deadline = time.monotonic() + 120
        while len(_shards(job)) < 4:  # every answer the server gave is on disk; the job waits in its backoff
            assert worker.poll() is None and time.monotonic() < deadline, "the annotation job ended early"
            time.sleep(0.05)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        _faults(url, budget=None)
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == -signal.SIGKILL
    kept = len(_shards(job))
    assert kept == 4 and _stats(url)["examples"] - before["examples"] == 32  # killed mid-way
    assert json.loads((job / "manifest.json").read_text())["num_examples"] == 96

    resumed, stats = annotate_with_teacher(
        data, teacher_from_url(url, LABELS, "top_k", 3), "image", job, batch_size=8, return_stats=True
    )
    after = _stats(url)
    assert stats.reused == 8 * kept and stats.queries == 96 - 8 * kept
    assert after["examples"] - before["examples"] == 96  # each example asked exactly once over both runs
    assert after["inputs_answered_twice"] == before["inputs_answered_twice"]

    uninterrupted = annotate_with_teacher(data, teacher_from_url(url, LABELS, "top_k", 3), "image", tmp_path / "whole", batch_size=8)  # fmt: skip
    assert resumed[TEACHER_TOP_K_INDICES] == uninterrupted[TEACHER_TOP_K_INDICES]
    assert resumed[TEACHER_TOP_K_PROBS] == uninterrupted[TEACHER_TOP_K_PROBS]


def test_rate_limited_requests_are_retried_until_done(served, tmp_path):
    url, _ = served
    data = _images(24, seed=4)
    before = _stats(url)
    _faults(url, status=429, count=3)
    teacher = teacher_from_url(url, LABELS, "label", base_wait_time=0.01, max_wait_time=0.05)
    result, stats = annotate_with_teacher(data, teacher, "image", tmp_path / "job", batch_size=8, max_in_flight=1, return_stats=True)  # fmt: skip
    after = _stats(url)
    assert after["refused"] - before["refused"] == 3
    assert stats.queries == 24 and after["examples"] - before["examples"] == 24
    assert all(0 <= label < 10 for label in result["teacher_label"])


def test_permanent_failure_names_the_examples_and_the_last_response(served, tmp_path):
    url, _ = served
    _faults(url, status=500, count=1000)
    try:
        teacher = teacher_from_url(url, LABELS, "label", max_retries=2, base_wait_time=0.01, max_wait_time=0.02)
        with pytest.raises(TeacherRequestError, match=r"examples 0\.\.7.*injected 500"):
            annotate_with_teacher(_images(8, seed=5), teacher, "image", tmp_path / "job", batch_size=8, max_in_flight=1)  # fmt: skip
    finally:
        _faults(url, status=500, count=0)


@pytest.mark.parametrize(
    "bad, message",
    [
        ([{"label": "cat", "score": 0.9}], r"example 5: the teacher's label 'cat' is not one of the student's classes"),
        ([{"label": "class_1", "score": float("nan")}], r"example 5: the score of 'class_1' is nan"),
        ([{"label": "class_1", "score": 0.8}, {"label": "class_2", "score": 0.7}], r"example 5: the scores sum to 1\.5"),
        ([{"label": "class_1", "score": 3.2}], r"example 5: the score of 'class_1' is 3\.2, not a probability"),
    ],
)
def test_malformed_answer_is_refused_by_example_index(tmp_path, bad, message):
    def answer(inputs, k):
        return [bad if x == 5 else [{"label": "class_0", "score": 0.6}, {"label": "class_1", "score": 0.4}] for x in inputs]

    data = Dataset.from_dict({"x": list(range(8))})
    with pytest.raises(TeacherAnswerError, match=message):
        annotate_with_teacher(data, teacher_from_callable(answer, LABELS, "top_k", 1), "x", tmp_path / "job", batch_size=4)  # fmt: skip


def test_student_learns_from_top_k_answers_and_few_labels(tmp_path):
    """A callable teacher answers top-2; only 32 of 512 examples keep their labels; the student trains without any
    teacher model and agrees with the teacher."""
    teacher = make_teacher(num_labels=4)
    train, test = make_dataset(teacher, 512, seed=20), make_dataset(teacher, 256, seed=21)

    def answer(inputs, k):
        with torch.no_grad():
            probs = teacher(torch.stack(inputs)).logits.softmax(-1)
        values, indices = probs.topk(k, -1)
        return [[{"label": str(i), "score": v} for i, v in zip(ri, rv)] for ri, rv in zip(indices.tolist(), values.tolist())]  # fmt: skip

    api = teacher_from_callable(answer, ["0", "1", "2", "3"], "top_k", 2)
    answered = annotate_with_teacher(train, api, "features", tmp_path / "job", batch_size=64)
    labels = np.array(train["labels"])
    labels[32:] = -100  # the rest is a transfer set
    answered = answered.remove_columns("labels").add_column("labels", labels.tolist()).with_format("torch")
    before = [p.detach().clone() for p in make_student(num_labels=4).parameters()]

    def train_student(dataset, alpha):
        student = make_student(num_labels=4)
        args = DistillationConfig(
            output_dir=str(tmp_path / f"out{alpha}"), per_device_train_batch_size=32, num_train_epochs=10,
            learning_rate=1e-2, logging_steps=5, save_strategy="no", report_to="none", seed=0,
            dataloader_pin_memory=False, disable_tqdm=True, alpha=alpha,
        )  # fmt: skip
        trainer = DistillationTrainer(model=student, args=args, train_dataset=dataset)
        trainer.train()
        with torch.no_grad():
            agree = student(test[:]["features"]).logits.argmax(-1) == teacher(test[:]["features"]).logits.argmax(-1)
        return student, trainer.state.log_history, agree.float().mean().item()

    student, logs, distilled = train_student(answered, alpha=0.5)
    _, _, labels_only = train_student(answered, alpha=0.0)  # CE on the 32 labelled examples alone
    kd = [entry["loss_kd"] for entry in logs if "loss_kd" in entry and "train_loss" not in entry]
    assert kd[-1] < kd[0] / 2
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    assert distilled >= 0.85 and distilled >= labels_only + 0.05, (distilled, labels_only)
    assert api.queries == 512


@pytest.mark.slow
def test_mnist_example_distils_from_the_served_teacher_with_few_labels(served, tmp_path):
    from datasets import DatasetDict
    from test_examples_image import make_image_dataset, run_example

    url, _ = served
    data_dir, transfer_dir, output_dir = tmp_path / "data", tmp_path / "transfer", tmp_path / "run"
    DatasetDict({"train": make_image_dataset(256, 28, "L", seed=0), "test": make_image_dataset(64, 28, "L", seed=1)}).save_to_disk(data_dir)  # fmt: skip
    DatasetDict({"train": make_image_dataset(48, 28, "L", seed=2).remove_columns("label")}).save_to_disk(transfer_dir)
    before = _stats(url)
    run_example(
        "distill_mnist.py", "--dataset_name", str(data_dir), "--output_dir", str(output_dir),
        "--teacher_url", url, "--teacher_answers", "top_k", "--teacher_top_k", "3", "--max_labeled_samples", "32",
        "--transfer_dataset", str(transfer_dir), "--num_train_epochs", "2", "--latency_examples", "8",
        "--plot", "false", "--metric_name_or_path", str(REPO_ROOT / "tests" / "metrics" / "accuracy"),
        env={"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    report = json.loads((output_dir / "distillation_report.json").read_text())
    assert [model["name"] for model in report["models"]] == ["student_ce", "student_kd"]
    black_box = report["black_box"]
    assert black_box["labeled_examples"] == 32 and black_box["teacher_answered_examples"] == 256 + 48
    assert black_box["transfer_examples"] == 256 - 32 + 48
    assert black_box["queries"] == 256 + 48 + 64 == _stats(url)["examples"] - before["examples"]
    assert black_box["queries_by_split"] == {"train": 256, "transfer": 48, "test": 64}
    assert 0.0 <= black_box["teacher_test_accuracy"] <= 1.0
    assert "Black-box teacher at" in (output_dir / "distillation_report.md").read_text()


@pytest.mark.slow
def test_transfer_set_alone_teaches_when_no_training_image_is_kept(served, tmp_path):
    """`--max_train_samples 0 --transfer_dataset ...`: the student never sees a training image (the teacher is not
    asked about any); it trains on the transfer set's answers alone and is scored on the test split."""
    from datasets import DatasetDict
    from test_examples_image import make_image_dataset, run_example

    url, _ = served
    data_dir, transfer_dir, output_dir = tmp_path / "data", tmp_path / "transfer", tmp_path / "run"
    DatasetDict({"train": make_image_dataset(64, 28, "L", seed=0), "test": make_image_dataset(32, 28, "L", seed=1)}).save_to_disk(data_dir)  # fmt: skip
    DatasetDict({"train": make_image_dataset(40, 28, "L", seed=3).remove_columns("label")}).save_to_disk(transfer_dir)
    before = _stats(url)
    run_example(
        "distill_mnist.py", "--dataset_name", str(data_dir), "--output_dir", str(output_dir), "--teacher_url", url,
        "--teacher_answers", "top_k", "--max_train_samples", "0", "--transfer_dataset", str(transfer_dir),
        "--max_steps", "3", "--latency_examples", "8", "--plot", "false",
        "--metric_name_or_path", str(REPO_ROOT / "tests" / "metrics" / "accuracy"),
        env={"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    report = json.loads((output_dir / "distillation_report.json").read_text())
    assert [model["name"] for model in report["models"]] == ["student_kd"]  # no label: no CE baseline
    black_box = report["black_box"]
    assert black_box["labeled_examples"] == 0 and black_box["teacher_answered_examples"] == 40
    assert black_box["queries_by_split"] == {"transfer": 40, "test": 32}
    assert _stats(url)["examples"] - before["examples"] == 40 + 32
    assert report["num_test_examples"] == 32


def test_no_training_example_needs_a_transfer_set():
    """0 training examples is refused unless a black-box teacher answers a transfer set to train on."""
    from hf_kd.runs.arguments import DataArguments, ExperimentArguments, check_black_box_arguments

    for data, experiment in [
        (DataArguments(dataset_name="d", max_train_samples=0), ExperimentArguments()),
        (DataArguments(dataset_name="d", max_train_samples=0), ExperimentArguments(teacher_url="http://127.0.0.1:9")),
        (DataArguments(dataset_name="d", max_train_samples=-1, transfer_dataset="t"),
         ExperimentArguments(teacher_url="http://127.0.0.1:9")),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=r"max_train_samples must be a positive integer.*--transfer_dataset"):
            check_black_box_arguments(data, experiment)
    ok = DataArguments(dataset_name="d", max_train_samples=0, transfer_dataset="t")
    check_black_box_arguments(ok, ExperimentArguments(teacher_url="http://127.0.0.1:9"))


@pytest.fixture
def text_server(tmp_path):
    """A tiny BERT sentiment classifier served by hf_kd.serve's app (uvicorn in a thread, on loopback)."""
    import threading

    import uvicorn
    from conftest import tiny_bert
    from test_text import NEGATIVE, NEUTRAL, POSITIVE, SPECIALS, make_tokenizer

    from hf_kd.serve import build_app
    from hf_kd.teacher.classifier import ClassifierAnswers

    tokenizer = make_tokenizer(tmp_path, "tok", SPECIALS + POSITIVE + NEGATIVE + NEUTRAL)
    pad = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    teacher = tiny_bert(num_layers=2, seed=0, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1}, **pad)
    student = tiny_bert(num_layers=2, seed=1, **pad)
    for model, name in ((teacher, "teacher"), (student, "student")):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    port = _free_port()
    app = build_app(ClassifierAnswers.from_pretrained(tmp_path / "teacher"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the text server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", tmp_path / "student"
    server.should_exit = True
    thread.join(timeout=10)


def _run_text_example(url, student_dir, tmp_path, train_size: int, test_size: int, *flags: str):
    """The text example against the served teacher, on generated reviews and a 24-review unlabeled transfer set."""
    from datasets import DatasetDict
    from test_examples_image import load_example
    from test_text import sentiment_dataset

    data_dir, transfer_dir = tmp_path / "data", tmp_path / "transfer"
    splits = {"train": sentiment_dataset(train_size, seed=0), "test": sentiment_dataset(test_size, seed=1)}
    DatasetDict(splits).save_to_disk(data_dir)
    DatasetDict({"train": sentiment_dataset(24, seed=2).remove_columns("label")}).save_to_disk(transfer_dir)
    return load_example("distill_text_classification.py").main([
        "--dataset_name", str(data_dir), "--output_dir", str(tmp_path / "run"), "--teacher_url", url,
        "--student_model_name_or_path", str(student_dir), "--student_num_layers", "1",
        "--transfer_dataset", str(transfer_dir), "--latency_examples", "4", "--plot", "false",
        "--metric_name_or_path", str(REPO_ROOT / "tests" / "metrics" / "accuracy"), "--report_to", "none", *flags,
    ])  # fmt: skip


@pytest.mark.slow
def test_text_example_distils_from_a_served_text_classifier(text_server, tmp_path):
    url, student_dir = text_server
    before = _stats(url)
    report = _run_text_example(
        url, student_dir, tmp_path, 96, 32, "--teacher_answers", "probs", "--max_labeled_samples", "16",
        "--num_train_epochs", "1", "--per_device_train_batch_size", "16",
    )  # fmt: skip
    black_box = report.black_box
    assert black_box["answers"] == "probs" and black_box["labeled_examples"] == 16
    assert black_box["teacher_answered_examples"] == 96 + 24 and black_box["transfer_examples"] == 80 + 24
    assert black_box["queries"] == 96 + 24 + 32 == _stats(url)["examples"] - before["examples"]
    assert [model.name for model in report.models] == ["student_ce", "student_kd"]


@pytest.mark.slow
def test_text_transfer_set_alone_teaches_when_no_training_text_is_kept(text_server, tmp_path):
    url, student_dir = text_server
    report = _run_text_example(
        url, student_dir, tmp_path, 32, 16, "--teacher_answers", "label", "--max_train_samples", "0",
        "--max_steps", "2", "--per_device_train_batch_size", "8",
    )  # fmt: skip
    assert report.black_box["queries_by_split"] == {"transfer": 24, "test": 16}
    assert report.black_box["teacher_answered_examples"] == 24 and report.black_box["labeled_examples"] == 0
    assert [model.name for model in report.models] == ["student_kd"]


def test_pipeline_teacher_answers_as_the_classifier_does(tmp_path):
    """A transformers pipeline as the teacher: the same answers as the saved classifier called in process."""
    from conftest import tiny_bert
    from test_text import (
        NEGATIVE,
        NEUTRAL,
        POSITIVE,
        SPECIALS,
        make_tokenizer,
        sentiment_dataset,
    )
    from transformers import pipeline

    from hf_kd.teacher.remote import teacher_from_pipeline

    tokenizer = make_tokenizer(tmp_path, "tok", SPECIALS + POSITIVE + NEGATIVE + NEUTRAL)
    labels = {"id2label": {0: "neg", 1: "mid", 2: "pos"}, "label2id": {"neg": 0, "mid": 1, "pos": 2}}
    model = tiny_bert(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, num_labels=3, **labels)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    texts = sentiment_dataset(12, seed=3).remove_columns("label")
    pipe = pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")
    # Full probabilities: an untrained model's classes are close, and their order may flip with padding's rounding.
    via_pipeline = annotate_with_teacher(texts, teacher_from_pipeline(pipe, answers="probs"), "text", tmp_path / "a", batch_size=5)  # fmt: skip
    in_process = annotate_with_teacher(texts, teacher_from_model(tmp_path / "model", "probs"), "text", tmp_path / "b", batch_size=5)  # fmt: skip
    np.testing.assert_allclose(via_pipeline["teacher_probs"], in_process["teacher_probs"], rtol=1e-4, atol=1e-6)
    assert np.allclose(np.array(via_pipeline["teacher_probs"]).sum(1), 1.0, atol=1e-5)
