"""Serve a saved classifier (image or text) in the Hugging Face classification protocol, on loopback by default.

    pip install "hf_kd[serve]"
    python -m hf_kd.serve distill-mnist/teacher --port 8000

`POST /` takes `{"inputs": x, "parameters": {"top_k": k}}` with `x` a text, a base64-encoded image, or a list of
them (a batch), or an image's raw bytes, and answers `[{"label": ..., "score": ...}, ...]` per input, best first,
as Inference Endpoints and TEI do (so `huggingface_hub.InferenceClient(url).image_classification(...)` works too).
`GET /health` says it is up; `GET /stats` counts the requests and examples it answered, and how many inputs it
answered more than once. With `--enable_fault_injection`, `POST /faults` makes the next requests fail with a
status (e.g. `{"status": 429, "count": 3}`) holds every request with 503 until released (`{"hold": false}`), or admits
only a few more requests before holding (`{"budget": 4}`; `{"budget": null}` releases it):
what a test needs to exercise retries and a killed annotation job.

Built on FastAPI and uvicorn (the `serve` extra).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .teacher.classifier import ClassifierAnswers


def _decode(value, kind: str):
    if kind == "text":
        if not isinstance(value, str):
            raise ValueError(f"a text classifier takes strings, got {type(value).__name__}.")
        return value
    import PIL.Image

    data = base64.b64decode(value) if isinstance(value, str) else value
    return PIL.Image.open(io.BytesIO(data))


class ServerState:
    """What the server counts, and the faults a test asked for."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = self.examples = self.refused = 0
        self.answered = Counter()  # sha1 of each answered input -> how many times
        self.fail_status, self.fail_count, self.hold = 0, 0, False
        self.budget: int | None = None  # requests still admitted before holding; None: no limit

    def fault(self) -> int | None:
        with self.lock:
            if self.budget is not None:
                self.hold = self.budget <= 0
                self.budget -= 0 if self.hold else 1
            if self.hold:
                self.refused += 1
                return 503
            if self.fail_count > 0:
                self.fail_count -= 1
                self.refused += 1
                return self.fail_status
        return None

    def record(self, raw_inputs: list) -> None:
        with self.lock:
            self.requests += 1
            self.examples += len(raw_inputs)
            for value in raw_inputs:
                self.answered[hashlib.sha1(value if isinstance(value, bytes) else value.encode()).hexdigest()] += 1

    def stats(self) -> dict:
        with self.lock:
            repeated = sum(1 for count in self.answered.values() if count > 1)
            return {"requests": self.requests, "examples": self.examples, "refused": self.refused,
                    "distinct_inputs": len(self.answered), "inputs_answered_twice": repeated}  # fmt: skip


def build_app(classifier: ClassifierAnswers, enable_fault_injection: bool = False) -> FastAPI:
    """The FastAPI app answering for `classifier` (one forward at a time: the model is not shared between threads)."""
    app = FastAPI(title="hf_kd classifier server")
    state, forward_lock = ServerState(), threading.Lock()
    app.state.counts = state

    def answer(decoded: list, top_k: int | None) -> list:
        with forward_lock:
            return classifier(decoded, top_k)

    @app.get("/health")
    def health():
        return {"status": "ok", "kind": classifier.kind, "labels": classifier.label_names}

    @app.get("/stats")
    def stats():
        return state.stats()

    @app.post("/")
    async def predict(request: Request):
        if (status := state.fault()) is not None:
            return JSONResponse({"error": f"injected {status}"}, status_code=status)
        if request.headers.get("content-type", "").startswith("application/json"):
            body = await request.json()
            inputs, parameters = body.get("inputs"), body.get("parameters") or {}
        else:  # raw image bytes, the protocol's other form
            inputs, parameters = await request.body(), {}
        batch = inputs if isinstance(inputs, list) else [inputs]
        try:
            decoded = [_decode(value, classifier.kind) for value in batch]
        except Exception as error:  # noqa: BLE001 (a bad input is the client's error, answered as such)
            return JSONResponse({"error": f"cannot read the inputs: {error}"}, status_code=400)
        # In a worker thread, so the event loop reads the next requests while the model runs.
        answers = await run_in_threadpool(answer, decoded, parameters.get("top_k"))
        state.record(batch)
        # A JSONResponse as is: skips FastAPI's jsonable_encoder, which walks every dict of the answer first.
        return JSONResponse(answers if isinstance(inputs, list) else answers[0])

    if enable_fault_injection:

        @app.post("/faults")
        async def faults(request: Request):
            body = await request.json()
            with state.lock:
                state.fail_status = int(body.get("status", state.fail_status or 429))
                state.fail_count = int(body.get("count", 0))
                state.hold = bool(body.get("hold", state.hold))
                if "budget" in body:  # admit this many more requests, then hold (None: no limit, hold released)
                    state.budget = body["budget"]
                    state.hold = False
            return {"fail_status": state.fail_status, "fail_count": state.fail_count, "hold": state.hold}

    return app


@contextlib.contextmanager
def serving(model_dir: str | os.PathLike, *extra_args: str, threads: int = 1, startup_timeout_s: float = 180.0,
            stderr=None):  # fmt: skip
    """`python -m hf_kd.serve model_dir` in a subprocess on a free loopback port, for as long as the block runs:
    yields the URL once `GET /health` answers, then stops the server. `extra_args` go to the command line (e.g.
    `"--enable_fault_injection"`); `threads` is the server's torch and OpenMP threads."""
    from .teacher.remote import http_module

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "hf_kd.serve", str(model_dir), "--port", str(port),
               "--torch_num_threads", str(threads), *extra_args]  # fmt: skip
    server = subprocess.Popen(command, env=env, stderr=stderr)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + startup_timeout_s
    try:
        while True:
            try:
                http_module().get(f"{url}/health", timeout=2).raise_for_status()
                break
            except Exception:  # noqa: BLE001 (not up yet: any error means try again)
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{' '.join(command)} did not start (exit code {server.poll()}).") from None
                time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="Directory of a saved image or text classifier (with its processor).")
    parser.add_argument("--host", default="127.0.0.1", help="Interface to listen on (default: loopback only).")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max_length", type=int, default=512, help="Texts are truncated to this many tokens.")
    parser.add_argument("--torch_num_threads", type=int, default=None, help="torch.set_num_threads for the model.")
    parser.add_argument("--enable_fault_injection", action="store_true", help="Enable POST /faults (tests).")
    args = parser.parse_args(argv)
    import torch
    import uvicorn

    if args.torch_num_threads:
        torch.set_num_threads(args.torch_num_threads)
    app = build_app(ClassifierAnswers.from_pretrained(args.model_dir, args.max_length), args.enable_fault_injection)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
