"""Publishing the student: the distillation model card, and `push_to_hub` against a local stand-in for the Hub.

The only thing replaced is the network: a small HTTP server on 127.0.0.1 answers the Hub endpoints that
`Trainer.push_to_hub` calls (create the repo, validate the card's YAML, preupload, commit), and keeps what it was sent.
Everything else runs for real: training, saving, the card, huggingface_hub's upload code. Every host other than the
loopback address is refused, so a stray request can never leave the machine.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub
import pytest
import torch
import transformers.utils.hub
from conftest import make_dataset, make_student
from datasets import Dataset
from huggingface_hub import ModelCard
from PIL import Image
from transformers import AutoModelForImageClassification

from hf_kd import DistillationConfig, DistillationTrainer
from hf_kd.models import image_processor_for_preset, model_from_preset
from hf_kd.report.hub import HubPushError

REPO_ID = "hf-kd-tests/mnist-mlp-student-kd"
TOKEN = "hf_stand_in_token"
# What the Hub must receive: the student and its card, nothing of the teacher, the baseline or the checkpoints.
STUDENT_FILES = {
    "README.md",
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "configuration_mlp.py",
    "modeling_mlp.py",
    "image_processing_hf_kd.py",
    "training_args.bin",
    "distillation_report.png",
}
MAX_REQUESTS = 50  # a client stuck in a retry loop ends up refused instead of spinning
SERVER_LIFETIME_S = 120  # the stand-in stops by itself even if a test forgets it


class HubStandIn:
    """The Hub endpoints of an upload, on 127.0.0.1. `mode`: "ok", or an HTTP status to answer every request with."""

    def __init__(self, mode: str = "ok"):
        self.mode = mode
        self.requests: list[tuple[str, str]] = []
        self.auth_headers: list[str | None] = []
        self.created: list[dict] = []
        self.files: dict[str, bytes] = {}
        self.commits: list[dict] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest's output clean
                pass

            def _reply(self, status: int, payload: dict, headers: dict | None = None):
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?")[0]
                stand_in.requests.append((self.command, path))
                stand_in.auth_headers.append(self.headers.get("Authorization"))
                if len(stand_in.requests) >= MAX_REQUESTS:
                    threading.Thread(target=stand_in.server.shutdown, daemon=True).start()
                if stand_in.mode == "401":
                    message = "Invalid credentials in Authorization header"
                    return self._reply(401, {"error": message}, {"X-Error-Message": message})
                if stand_in.mode != "ok":
                    return self._reply(int(stand_in.mode), {"error": "Internal Error"})
                repo = f"/api/models/{REPO_ID}"
                if (self.command, path) == ("POST", "/api/repos/create"):
                    request = json.loads(body)
                    stand_in.created.append(request)
                    # Without a namespace, the Hub creates the repository in the token owner's: ours is REPO_ID's.
                    namespace = request.get("organization") or REPO_ID.split("/")[0]
                    return self._reply(200, {"url": f"{stand_in.url}/{namespace}/{request['name']}"})
                if (self.command, path) == ("POST", "/api/validate-yaml"):
                    return self._reply(200, {"errors": [], "warnings": []})
                if (self.command, path) == ("POST", f"{repo}/preupload/main"):
                    files = json.loads(body)["files"]
                    return self._reply(
                        200,
                        {
                            "files": [
                                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                            ]
                        },
                    )
                if (self.command, path) == ("POST", f"{repo}/commit/main"):
                    for line in body.splitlines():
                        item = json.loads(line)
                        if item["key"] == "header":
                            stand_in.commits.append(item["value"])
                        elif item["key"] == "file":
                            stand_in.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                        else:
                            return self._reply(400, {"error": f"unexpected commit operation {item['key']}"})
                    oid = "0" * 40
                    return self._reply(
                        200,
                        {
                            "commitUrl": f"{stand_in.url}/{REPO_ID}/commit/{oid}",
                            "commitOid": oid,
                            "pullRequestUrl": None,
                        },
                    )
                return self._reply(404, {"error": f"the stand-in does not serve {self.command} {path}"})

            do_GET = do_POST = do_PUT = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._timer = threading.Timer(SERVER_LIFETIME_S, self.server.shutdown)
        self._timer.daemon = True

    def __enter__(self):
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self._timer.cancel()
        self.server.shutdown()
        self.server.server_close()


def _closed_port_url() -> str:
    """A loopback URL where nothing listens: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def hub_endpoint(monkeypatch, tmp_path):
    """Point huggingface_hub at `endpoint` (online, with a token) and refuse every host but 127.0.0.1."""
    real_getaddrinfo = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            raise OSError(f"test_hub: no network access outside the loopback address (asked for {host!r})")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    # conftest sets HF_HUB_OFFLINE=1 for the whole suite; uploading is what these tests are about.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)

    def use(endpoint: str):
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
        # transformers keeps one HfApi, which reads the endpoint when it is made.
        monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)

    return use


def _accuracy(eval_pred):
    return {"accuracy": float((eval_pred.predictions.argmax(-1) == eval_pred.label_ids).mean())}


def _experiment(root: Path, **args_kwargs) -> DistillationTrainer:
    """A distillation run laid out as the examples lay it out: teacher/, student_ce/, student_kd/ and the report."""
    torch.manual_seed(0)
    teacher = model_from_preset("mnist-mlp-teacher").eval()
    student = model_from_preset("mnist-mlp-student")
    pixel_values = torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        labels = teacher(pixel_values).logits.argmax(-1)
    dataset = Dataset.from_dict({"pixel_values": pixel_values.numpy(), "labels": labels.numpy()}).with_format("torch")

    # The other models of the run: they sit next to the student and must never reach the Hub.
    teacher.save_pretrained(root / "teacher")
    model_from_preset("mnist-mlp-student").save_pretrained(root / "student_ce")

    args = DistillationConfig(
        output_dir=str(root / "student_kd"),
        max_steps=4,
        save_steps=2,  # leaves checkpoint-2/ and checkpoint-4/ in the output directory
        per_device_train_batch_size=16,
        learning_rate=1e-2,
        report_to="none",
        dataloader_pin_memory=False,
        hub_model_id=REPO_ID,
        **args_kwargs,
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=dataset,
        eval_dataset=dataset,
        processing_class=image_processor_for_preset("mnist-mlp-student"),
        compute_metrics=_accuracy,
    )
    trainer.train()
    kd_accuracy = trainer.evaluate()["eval_accuracy"]

    Image.new("RGB", (16, 8), "white").save(root / "distillation_report.png")
    settings = {
        "temperature": args.temperature, "alpha": args.alpha, "loss_type": args.loss_type, "teacher_logits": "live",
        "num_train_epochs": args.num_train_epochs, "learning_rate": args.learning_rate, "seed": args.seed,
        "per_device_train_batch_size": args.per_device_train_batch_size,
    }  # fmt: skip
    entry = {"size_mb": 0.3, "train_time_s": 1.0, "eval_time_s": 0.1, "latency_ms": 0.02}
    report = {
        "dataset": "ylecun/mnist",
        "task": "image-classification",
        "teacher": "trained here",
        "metric": "accuracy",
        "settings": settings,
        "models": [
            {**entry, "name": "teacher", "label": "Teacher", "path": "teacher", "parameters": 355110,
             "accuracy": 1.0, "agreement_with_teacher": 1.0},
            {**entry, "name": "student_ce", "label": "Student (CE only)", "path": "student_ce", "parameters": 79510,
             "accuracy": 0.5, "agreement_with_teacher": 0.5},
            {**entry, "name": "student_kd", "label": "Student (KD)", "path": "student_kd", "parameters": 79510,
             "accuracy": kd_accuracy, "agreement_with_teacher": kd_accuracy},
        ],
        "plot": "distillation_report.png",
    }  # fmt: skip
    (root / "distillation_report.json").write_text(json.dumps(report))
    return trainer


def _local_files(directory: Path) -> set[str]:
    return {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}


def _assert_card(card: ModelCard, report: dict):
    data = card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "image-classification"
    assert {"knowledge-distillation", "hf_kd"} <= set(data.tags)
    assert data.datasets == ["ylecun/mnist"]
    # The student was trained from scratch: no base model (and never the teacher as one).
    assert data.base_model is None and data.get("base_model_relation") is None
    (result,) = data.eval_results
    kd = report["models"][2]
    assert (result.task_type, result.dataset_type, result.metric_type) == (
        "image-classification",
        "ylecun/mnist",
        "accuracy",
    )
    assert result.metric_value == pytest.approx(kd["accuracy"], abs=1e-6)
    assert data.model_name == REPO_ID.split("/")[1]
    text = card.text
    assert f'pipeline("image-classification", model="{REPO_ID}", trust_remote_code=True)' in text
    assert "355,110" in text and "79,510" in text and "4.47× fewer parameters" in text
    assert "| Temperature `T` | 4 |" in text and "| `alpha` (weight of the teacher's term) | 0.5 |" in text
    assert "| Teacher logits | live" in text and "| Seed | 42 |" in text and "| Learning rate | 0.01 |" in text
    assert f"| **Student (KD)** (this model) | 79,510 | 0.300 | {100 * kd['accuracy']:.2f}% |" in text
    assert "| Student (CE only) | 79,510 | 0.300 | 50.00% |" in text
    assert "](distillation_report.png)" in text
    assert "Distilling the Knowledge in a Neural Network" in text and "1503.02531" in text


# ---------------------------------------------------------------------------------------------------------------------


def test_push_uploads_the_student_and_its_card(tmp_path, hub_endpoint):
    trainer = _experiment(tmp_path)
    student_dir = tmp_path / "student_kd"
    with HubStandIn() as hub:
        hub_endpoint(hub.url)
        commit = trainer.push_to_hub(report=tmp_path / "distillation_report.json")

    # The calls of an upload, authenticated with the token; nothing else was asked of the Hub.
    assert hub.requests == [
        ("POST", "/api/repos/create"),
        ("POST", "/api/validate-yaml"),
        ("POST", f"/api/models/{REPO_ID}/preupload/main"),
        ("POST", f"/api/models/{REPO_ID}/commit/main"),
    ]
    assert set(hub.auth_headers) == {f"Bearer {TOKEN}"}
    assert hub.created == [{"name": "mnist-mlp-student-kd", "organization": "hf-kd-tests"}]
    assert hub.commits[0]["summary"] == "End of training"
    assert commit.oid == "0" * 40

    # Exactly the student: no teacher, no baseline, no checkpoints (which are still there locally).
    assert set(hub.files) == STUDENT_FILES
    assert {"checkpoint-2", "checkpoint-4"} <= {p.name for p in student_dir.iterdir()}
    for name, content in hub.files.items():
        assert content == (student_dir / name).read_bytes(), name

    report = json.loads((tmp_path / "distillation_report.json").read_text())
    _assert_card(ModelCard(hub.files["README.md"].decode()), report)

    # The uploaded folder, rebuilt from what the Hub received, is the trained student.
    uploaded = tmp_path / "uploaded"
    uploaded.mkdir()
    for name, content in hub.files.items():
        (uploaded / name).write_bytes(content)
    pixel_values = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    reloaded = AutoModelForImageClassification.from_pretrained(uploaded).eval()
    student = trainer.accelerator.unwrap_model(trainer.model).eval()
    with torch.no_grad():
        expected = student(pixel_values).logits
        assert torch.equal(reloaded(pixel_values).logits, expected)
    torch.save({"pixel_values": pixel_values, "logits": expected}, tmp_path / "expected.pt")
    Image.fromarray((torch.rand(28, 28, generator=torch.Generator().manual_seed(6)) * 255).byte().numpy()).save(
        tmp_path / "digit.png"
    )
    _check_loads_without_hf_kd(uploaded, tmp_path)


_WITHOUT_HF_KD = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockHfKd(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hf_kd" or name.startswith("hf_kd."):
                raise ImportError(f"{name} is blocked: this process runs without hf_kd")

    sys.meta_path.insert(0, BlockHfKd())
    try:
        import hf_kd  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("hf_kd is still importable")

    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    directory, work = sys.argv[1], sys.argv[2]
    model = AutoModelForImageClassification.from_pretrained(directory, trust_remote_code=True).eval()
    expected = torch.load(f"{work}/expected.pt")
    with torch.no_grad():
        assert torch.equal(model(expected["pixel_values"]).logits, expected["logits"])
    image = Image.open(f"{work}/digit.png")
    processor = AutoImageProcessor.from_pretrained(directory, trust_remote_code=True)
    with torch.no_grad():
        top = model(**processor(image, return_tensors="pt")).logits.softmax(-1)[0].topk(1)
    predictions = pipeline("image-classification", model=directory, trust_remote_code=True)(image)
    print(json.dumps({
        "model_class": type(model).__module__,
        "pipeline_top": predictions[0],
        "top": {"label": model.config.id2label[int(top.indices[0])], "score": float(top.values[0])},
        "hf_kd_modules": [name for name in sys.modules if name.startswith("hf_kd")],
    }))
    """
)


def _check_loads_without_hf_kd(directory: Path, work: Path):
    """`trust_remote_code=True` loads the uploaded student, with the Auto classes and a pipeline, without hf_kd."""
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_HF_KD, str(directory), str(work)],
        check=False,
        cwd=work,  # not the repository root, which would put hf_kd on sys.path
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(work / "hf_home")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["hf_kd_modules"] == []
    assert loaded["model_class"].startswith("transformers_modules.")  # the uploaded code, not an installed package
    assert loaded["pipeline_top"]["label"] == loaded["top"]["label"]
    assert loaded["pipeline_top"]["score"] == pytest.approx(loaded["top"]["score"], abs=1e-5)


@pytest.mark.parametrize("failure", ["401", "500", "refused", "no token"])
def test_failed_push_names_the_hub_and_keeps_the_local_output(tmp_path, hub_endpoint, monkeypatch, failure):
    trainer = _experiment(tmp_path)
    student_dir = tmp_path / "student_kd"
    if failure == "no token":
        monkeypatch.delenv("HF_TOKEN")
    with HubStandIn(mode="ok" if failure in ("refused", "no token") else failure) as hub:
        endpoint = _closed_port_url() if failure == "refused" else hub.url
        hub_endpoint(endpoint)
        with pytest.raises(HubPushError) as excinfo:
            trainer.push_to_hub(report=tmp_path / "distillation_report.json")

    message = str(excinfo.value)
    assert f"Could not push to the Hugging Face Hub ({endpoint}), repository '{REPO_ID}'" in message
    assert str(student_dir) in message
    expected_cause = {
        "401": "the Hub rejected the token (HTTP 401 Unauthorized)",
        "500": "server error (HTTP 500)",
        "refused": "the Hub could not be reached (ConnectError",
        "no token": "no Hugging Face token was found",
    }[failure]
    assert expected_cause in message
    if failure in ("refused", "no token"):
        assert hub.requests == []  # nothing listened at the endpoint / nothing was sent without a token
    else:
        assert hub.requests[0] == ("POST", "/api/repos/create") and not hub.files

    # The local output is complete: the student, its code, processor and card, and no half-written file.
    local = _local_files(student_dir)
    assert STUDENT_FILES <= local
    assert not [name for name in local if name.endswith(".tmp")]
    reloaded = AutoModelForImageClassification.from_pretrained(student_dir)
    student = trainer.accelerator.unwrap_model(trainer.model)
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), student.state_dict().values()))
    report = json.loads((tmp_path / "distillation_report.json").read_text())
    _assert_card(ModelCard.load(student_dir / "README.md"), report)


def test_card_without_report_names_base_model_and_teacher(tmp_path, tiny_task):
    """A student started from a Hub checkpoint: `base_model` is that checkpoint (finetune), the teacher is named;
    without a report, the evaluation results come from the trainer's last evaluation."""
    teacher, train_dataset, eval_dataset = tiny_task
    teacher.config._name_or_path = "hf-kd-tests/tiny-teacher"
    student = make_student()
    student.config._name_or_path = "hf-kd-tests/tiny-student-init"
    train_dataset = make_dataset(teacher, 64, seed=3).add_column("teacher_logits", [[0.0] * 4] * 64)
    args = DistillationConfig(
        output_dir=str(tmp_path / "tiny-kd"), max_steps=2, per_device_train_batch_size=32, report_to="none",
        save_strategy="no", temperature=2.0, alpha=0.9, loss_type="mse", dataloader_pin_memory=False,
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=train_dataset.with_format("torch"),
        eval_dataset=eval_dataset, compute_metrics=_accuracy,
    )  # fmt: skip
    trainer.train()
    accuracy = trainer.evaluate()["eval_accuracy"]
    trainer.create_model_card(dataset_tags="hf-kd-tests/tiny-task", license="apache-2.0")

    card = ModelCard.load(tmp_path / "tiny-kd" / "README.md")
    assert card.data.base_model == "hf-kd-tests/tiny-student-init"
    assert card.data.get("base_model_relation") == "finetune"
    assert card.data.pipeline_tag == "text-classification" and card.data.license == "apache-2.0"
    assert card.data.datasets == ["hf-kd-tests/tiny-task"]
    (result,) = card.data.eval_results
    assert (result.metric_type, result.dataset_type) == ("accuracy", "hf-kd-tests/tiny-task")
    assert result.metric_value == pytest.approx(accuracy, abs=1e-6)
    assert "[hf-kd-tests/tiny-teacher](https://huggingface.co/hf-kd-tests/tiny-teacher)" in card.text
    # Not pushed: the snippet loads the student's local directory (no remote code for this model).
    assert f'pipeline("text-classification", model="{tmp_path / "tiny-kd"}")' in card.text
    assert (
        "| Teacher logits | precomputed" in card.text
        and "`mse`" in card.text
        and "| Temperature `T` | 2 |" in card.text
    )
    assert "## Results" in card.text and f"| accuracy | {accuracy:.4f} |" in card.text


def test_bad_report_leaves_the_existing_card(tmp_path, tiny_task):
    """A report that cannot be read raises, naming the argument, before anything is written."""
    teacher, train_dataset, _ = tiny_task
    args = DistillationConfig(output_dir=str(tmp_path), report_to="none", dataloader_pin_memory=False)
    trainer = DistillationTrainer(model=make_student(), teacher_model=teacher, args=args, train_dataset=train_dataset)
    trainer.create_model_card()
    before = (tmp_path / "README.md").read_bytes()
    assert ModelCard(before.decode()).data.tags == ["knowledge-distillation", "hf_kd"]
    (tmp_path / "distillation_report.json").write_text("{not json")
    with pytest.raises(ValueError, match="report: .*distillation_report.json is not valid JSON"):
        trainer.create_model_card()
    with pytest.raises(FileNotFoundError, match="report: no distillation report"):
        trainer.create_model_card(report=tmp_path / "missing.json")
    assert (tmp_path / "README.md").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "distillation_report.json"]


@pytest.mark.slow
def test_example_pushes_only_the_distilled_student(tmp_path, hub_endpoint):
    """`distill_mnist.py --push_to_hub --hub_model_id ...`: one repository, the KD student's directory alone, and a card
    that carries the run's report and plot."""
    from datasets import DatasetDict
    from test_examples_image import LOCAL_ACCURACY, load_example, make_image_dataset

    data_dir = tmp_path / "data"
    DatasetDict(
        {"train": make_image_dataset(128, 28, "L", seed=0), "test": make_image_dataset(32, 28, "L", seed=1)}
    ).save_to_disk(data_dir)
    run = tmp_path / "run"
    with HubStandIn() as hub:
        hub_endpoint(hub.url)
        load_example("distill_mnist.py").main(
            ["--dataset_name", str(data_dir), "--output_dir", str(run), "--num_train_epochs", "1",
             "--per_device_train_batch_size", "32", "--save_strategy", "steps", "--save_steps", "2",
             "--metric_name_or_path", LOCAL_ACCURACY, "--latency_examples", "2",
             "--push_to_hub", "--hub_model_id", REPO_ID]
        )  # fmt: skip

    # One repository, created once, for the distilled student; the teacher and the baseline stay local.
    assert hub.requests.count(("POST", "/api/repos/create")) == 1
    assert hub.requests.count(("POST", f"/api/models/{REPO_ID}/commit/main")) == 1
    assert set(hub.files) == STUDENT_FILES
    assert {"teacher", "student_ce", "student_kd", "distillation_report.json"} <= {p.name for p in run.iterdir()}
    assert any(p.name.startswith("checkpoint-") for p in (run / "student_kd").iterdir())
    for name, content in hub.files.items():
        assert content == (run / "student_kd" / name).read_bytes(), name
    assert hub.files["distillation_report.png"] == (run / "distillation_report.png").read_bytes()

    report = json.loads((run / "distillation_report.json").read_text())
    card = ModelCard(hub.files["README.md"].decode())
    (result,) = card.data.eval_results
    kd = next(model for model in report["models"] if model["name"] == "student_kd")
    assert (result.dataset_split, result.metric_value) == ("test", pytest.approx(kd["accuracy"], abs=1e-6))
    assert card.data.datasets is None  # a local dataset is named in the text, not as a Hub dataset
    assert f"`{data_dir}`" in card.text
    for label in ("| Teacher |", "| Student (CE only) |", "| **Student (KD)** (this model) |"):
        assert label in card.text
    assert "](distillation_report.png)" in card.text and "trained in the same run" in card.text


def _snippet_model_id(card: ModelCard) -> str:
    import re

    (model_id,) = re.findall(r'pipeline\("image-classification", model="([^"]+)", trust_remote_code=True\)', card.text)
    return model_id


def test_card_snippet_runs_on_the_saved_student(tmp_path):
    """First-hour issue: the card's snippet named the output directory (`distill-mnist`) while the student is in
    `distill-mnist/student_kd`. Not pushed, the snippet loads the student's own directory, and it runs."""
    from transformers import pipeline

    trainer = _experiment(tmp_path)
    trainer.save_model()
    old = os.umask(0o022)
    try:
        trainer.create_model_card(report=tmp_path / "distillation_report.json", model_name="distill-mnist")
    finally:
        os.umask(old)
    readme = tmp_path / "student_kd" / "README.md"
    assert readme.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    model_id = _snippet_model_id(ModelCard.load(readme))
    assert model_id == str(tmp_path / "student_kd")
    image = Image.fromarray((torch.rand(28, 28, generator=torch.Generator().manual_seed(3)) * 255).byte().numpy())
    predictions = pipeline("image-classification", model=model_id, trust_remote_code=True)(image)
    labels = set(trainer.model.config.id2label.values())
    assert len(predictions) == 5 and all(p["label"] in labels for p in predictions)
    assert sum(p["score"] for p in predictions) <= 1 + 1e-5


def test_push_without_namespace_names_the_repository_the_hub_created(tmp_path, hub_endpoint):
    """`--hub_model_id mnist-mlp-student-kd` (no namespace): the card names the id `create_repo` returned."""
    trainer = _experiment(tmp_path)
    trainer.args.hub_model_id = REPO_ID.split("/")[1]
    with HubStandIn() as hub:
        hub_endpoint(hub.url)
        trainer.push_to_hub(report=tmp_path / "distillation_report.json")
    assert hub.created[0]["name"] == REPO_ID.split("/")[1] and not hub.created[0].get("organization")
    card = ModelCard(hub.files["README.md"].decode())
    assert _snippet_model_id(card) == REPO_ID and card.data.model_name == REPO_ID.split("/")[1]


def test_card_license_and_teacher_recipe(tmp_path):
    """The card records how the run trained its teacher, and a license: hf_kd's Apache-2.0 unless the user's."""
    from hf_kd.report.report import DistillationReport

    trainer = _experiment(tmp_path)
    report = DistillationReport.load(tmp_path)
    report.teacher_recipe = {"num_train_epochs": 3, "learning_rate": 1e-3, "loss": "cross-entropy", "max_shift": 1}
    report.num_test_examples, report.majority_class_accuracy = 64, 0.9  # a teacher no better than the majority
    report.models[0].accuracy = 0.9
    report.save(tmp_path, plot=False)

    trainer.create_model_card(report=tmp_path)
    card = ModelCard.load(tmp_path / "student_kd" / "README.md")
    assert card.data.license == "apache-2.0"
    assert "The teacher was trained in this run: epochs: 3, learning rate: 0.001" in card.text
    assert "random translation (max pixels): 1" in card.text
    assert "**Warning: the teacher (90.00%) is no better than always answering the most frequent class" in card.text
    assert "hf_kd.losses.distillation_loss" in card.text
    assert "each model's fastest pass's median" in card.text  # how latency was measured
    trainer.create_model_card(license="mit", report=report)  # a report object is rendered as it is
    assert ModelCard.load(tmp_path / "student_kd" / "README.md").data.license == "mit"
