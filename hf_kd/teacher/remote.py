"""A teacher you can only call: a Python callable, a `transformers.pipeline`, or a URL that speaks the Hugging Face
classification protocol (`[{"label": ..., "score": ...}, ...]` per input, as Inference Endpoints, TEI and
`python -m hf_kd.serve` answer).

[`RemoteTeacher`] asks for a batch of raw inputs (PIL images, texts) and turns the answers into the black-box columns
of [`hf_kd.batch`]: `teacher_probs` (`answers="probs"`), `teacher_top_k_indices` + `teacher_top_k_probs`
(`answers="top_k"`) or `teacher_label` (`answers="label"`). Label names are mapped to the student's classes by name
(its `id2label`); an unknown name, a score that is not a probability, or NaN is refused naming the example's index.
"""

from __future__ import annotations

import base64
import io
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..batch import (
    TEACHER_LABEL,
    TEACHER_PROBS,
    TEACHER_TOP_K_INDICES,
    TEACHER_TOP_K_PROBS,
)

ANSWER_MODES = ("probs", "top_k", "label")
# How far the scores of one answer may sum above 1 (float32 rounding in a softmax), and below 1 for full probs.
_SUM_TOLERANCE = 1e-3


class TeacherAnswerError(ValueError):
    """An answer that cannot be used: an unknown label, a score that is not a probability, NaN, a wrong count."""


class TeacherRequestError(RuntimeError):
    """A request the teacher did not answer (after retries), naming the examples it held and the last response."""


def encode_input(value: Any) -> Any:
    """One input as JSON: a text as itself, an image (PIL, or encoded bytes) as base64 PNG, as the HF protocol's
    JSON form takes it."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):  # an undecoded `datasets.Image`
        data = value.get("bytes")
        if not data:
            with open(value["path"], "rb") as file:
                data = file.read()
        value = data
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if hasattr(value, "save"):  # a PIL image
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode("ascii")
    raise TypeError(f"cannot send an input of type {type(value).__name__}: give texts or images (PIL or bytes).")


class RemoteTeacher:
    """
    A teacher known only by its answers.

    Args:
        answer_batch (`Callable[[list, int], list]`): asks the teacher about a batch of raw inputs and returns one
            answer per input: a list of `{"label": name, "score": probability}` (any order), or a label name alone.
            Its second argument is how many classes to ask for (`top_k` of the protocol).
        label_names (`Sequence[str]`): the student's class names, in label-id order (its `id2label`).
        answers (`str`, *optional*, defaults to `"top_k"`): what to keep of each answer: `"probs"` (a score for
            every class), `"top_k"` (the `top_k` best classes and their scores) or `"label"` (the best class only).
        top_k (`int`, *optional*, defaults to `3`): `k` for `answers="top_k"`.
        description (`str`, *optional*): what the teacher is (a URL, a model name), for messages and the cache key.
        encoded_images (`bool`, *optional*, defaults to `False`): `answer_batch` takes images still encoded (the
            `{"bytes", "path"}` of an undecoded `datasets.Image`): a URL teacher sends the file's own bytes instead
            of decoding and re-encoding every image.
    """

    def __init__(
        self,
        answer_batch: Callable[[list, int], list],
        label_names: Sequence[str],
        answers: str = "top_k",
        top_k: int = 3,
        description: str | None = None,
        encoded_images: bool = False,
    ):
        if answers not in ANSWER_MODES:
            raise ValueError(f"answers must be one of {list(ANSWER_MODES)}, got {answers!r}.")
        if answers == "top_k" and not (isinstance(top_k, int) and 1 <= top_k <= len(label_names)):
            raise ValueError(f"top_k must be an integer in [1, {len(label_names)}] (the classes), got {top_k!r}.")
        self.answer_batch = answer_batch
        self.label_names = [str(name) for name in label_names]
        self.label2id = {name: index for index, name in enumerate(self.label_names)}
        self.answers, self.top_k = answers, top_k
        self.description = description or getattr(answer_batch, "__qualname__", type(answer_batch).__name__)
        self.queries = 0  # examples asked about, over this object's life (by every thread asking)
        self._count_lock = threading.Lock()
        self.encoded_images = encoded_images

    @property
    def request_top_k(self) -> int:
        """How many classes each request asks for: all of them for probabilities, 1 for a label, else `top_k`."""
        return {"probs": len(self.label_names), "label": 1, "top_k": self.top_k}[self.answers]

    def cache_key(self) -> str:
        """What makes two teachers' answers the same, for the annotation cache: source, answer kind and classes."""
        return f"{self.description}|{self.answers}|{self.request_top_k}|{','.join(self.label_names)}"

    def ask(self, inputs: list, start: int = 0) -> dict[str, np.ndarray]:
        """The teacher's answers about `inputs` (examples `start`, `start + 1`, ...) as black-box columns."""
        raw = self.answer_batch(list(inputs), self.request_top_k)
        with self._count_lock:
            self.queries += len(inputs)
        if not isinstance(raw, list) or len(raw) != len(inputs):
            got = len(raw) if isinstance(raw, list) else type(raw).__name__
            raise TeacherAnswerError(
                f"the teacher answered {got} for {len(inputs)} inputs (examples {start}..{start + len(inputs) - 1}): "
                "it must answer one list of {'label', 'score'} (or one label) per input."
            )
        return parse_answers(raw, self.label2id, self.answers, self.top_k, start)


def _scored(answer: Any, index: int) -> list[tuple[str, float]]:
    """One answer as (label, score) pairs, best first; a bare label (or `{"label": ...}`) scores 1."""
    if isinstance(answer, str):
        return [(answer, 1.0)]
    if isinstance(answer, dict):
        answer = [answer] if "label" in answer else None
    if not isinstance(answer, list) or not all(isinstance(item, dict) and "label" in item for item in answer):
        raise TeacherAnswerError(
            f"example {index}: expected a list of {{'label': ..., 'score': ...}} or a label, got {answer!r:.200}."
        )
    pairs = []
    for item in answer:
        score = item.get("score", 1.0)
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
            raise TeacherAnswerError(f"example {index}: the score of {item.get('label')!r} is {score!r}, not a number.")
        if not 0.0 <= score <= 1.0 + _SUM_TOLERANCE:
            raise TeacherAnswerError(
                f"example {index}: the score of {item.get('label')!r} is {score}, not a probability in [0, 1] (a "
                "teacher that answers logits must be asked for probabilities, e.g. function_to_apply='softmax')."
            )
        pairs.append((str(item["label"]), float(score)))
    if sum(score for _, score in pairs) > 1.0 + _SUM_TOLERANCE:
        raise TeacherAnswerError(
            f"example {index}: the scores sum to {sum(s for _, s in pairs):.4f} > 1, not probabilities of one "
            "distribution (a multi-label sigmoid?)."
        )
    return sorted(pairs, key=lambda pair: -pair[1])


def _class_ids(pairs: list[tuple[str, float]], label2id: dict[str, int], index: int) -> list[int]:
    unknown = [label for label, _ in pairs if label not in label2id]
    if unknown:
        raise TeacherAnswerError(
            f"example {index}: the teacher's label {unknown[0]!r} is not one of the student's classes "
            f"{list(label2id)[:20]}: name the student's classes as the teacher does (its id2label)."
        )
    return [label2id[label] for label, _ in pairs]


def parse_answers(raw: list, label2id: dict[str, int], answers: str, top_k: int, start: int = 0) -> dict[str, np.ndarray]:
    """Raw answers -> the black-box columns of [`hf_kd.batch`], each answer checked (errors name `start + i`)."""
    num_classes = len(label2id)
    rows = []
    for offset, answer in enumerate(raw):
        index = start + offset
        pairs = _scored(answer, index)
        ids = _class_ids(pairs, label2id, index)
        needed = {"probs": num_classes, "top_k": top_k, "label": 1}[answers]
        if len(set(ids)) < needed:
            raise TeacherAnswerError(
                f"example {index}: answers={answers!r} needs {needed} distinct classes, the teacher answered "
                f"{len(set(ids))} ({[label for label, _ in pairs]})."
            )
        rows.append((ids, [score for _, score in pairs]))
    if answers == "label":
        return {TEACHER_LABEL: np.array([ids[0] for ids, _ in rows], dtype=np.int64)}
    if answers == "top_k":
        return {
            TEACHER_TOP_K_INDICES: np.array([ids[:top_k] for ids, _ in rows], dtype=np.int64),
            TEACHER_TOP_K_PROBS: np.array([scores[:top_k] for _, scores in rows], dtype=np.float32),
        }
    probs = np.zeros((len(rows), num_classes), dtype=np.float32)
    for row, (ids, scores) in enumerate(rows):
        probs[row, ids] = scores
        if abs(probs[row].sum() - 1.0) > _SUM_TOLERANCE:
            raise TeacherAnswerError(f"example {start + row}: answers='probs' needs scores summing to 1, got {probs[row].sum():.4f}.")  # fmt: skip
    return {TEACHER_PROBS: probs}


def teacher_from_callable(fn: Callable, label_names: Sequence[str], answers: str = "top_k", top_k: int = 3):
    """A [`RemoteTeacher`] asking `fn(inputs, top_k)` (a list of raw inputs -> one answer per input)."""
    return RemoteTeacher(fn, label_names, answers, top_k)


def teacher_from_pipeline(pipe, label_names: Sequence[str] | None = None, answers: str = "top_k", top_k: int = 3):
    """A [`RemoteTeacher`] asking a `transformers.pipeline` (image- or text-classification); the student's classes
    default to the pipeline model's `id2label`."""
    pipe.model.eval()  # a model built in this process may still be in training mode (dropout on): answers would vary
    if label_names is None:
        id2label = pipe.model.config.id2label
        label_names = [id2label[i] for i in range(len(id2label))]

    def answer_batch(inputs: list, k: int) -> list:
        out = pipe(inputs, top_k=k)
        return [out] if len(inputs) == 1 and out and isinstance(out[0], dict) else out

    description = f"pipeline:{getattr(pipe.model, 'name_or_path', type(pipe.model).__name__)}"
    return RemoteTeacher(answer_batch, label_names, answers, top_k, description)


RETRY_STATUS_CODES = (408, 429, 500, 502, 503, 504)


def http_module():
    """huggingface_hub's HTTP client library: `httpx2` (huggingface_hub 2.x) or `httpx` (1.x), the same API."""
    try:
        import httpx2 as http
    except ImportError:
        import httpx as http
    return http


def post_with_backoff(client, url: str, payload: dict, max_retries: int, base_wait_time: float, max_wait_time: float):
    """POST `payload`, retrying 408 / 429 / 5xx answers, timeouts and dropped connections with exponential backoff
    (`base_wait_time` doubling up to `max_wait_time`; a `Retry-After` of some seconds is honoured), `max_retries`
    times; then [`TeacherRequestError`] with the last response.

    huggingface_hub's `http_backoff` does the same, but through the Hub's shared session, which refuses every URL in
    offline mode (`HF_HUB_OFFLINE=1`), the usual setting of an air-gapped cluster whose teacher server is local."""
    http = http_module()
    wait, last = base_wait_time, ""
    for attempt in range(max_retries + 1):
        try:
            response = client.post(url, json=payload)
        except (http.TimeoutException, http.NetworkError, http.RemoteProtocolError) as error:
            last = f"{type(error).__name__}: {error}"
        else:
            if response.status_code < 400:
                return response.json()
            last = f"HTTP {response.status_code}: {response.text[:300]!r}"
            if response.status_code not in RETRY_STATUS_CODES:
                break
            retry_after = response.headers.get("retry-after", "").strip()
            if retry_after.isdigit():
                wait = max(wait, float(retry_after))
        if attempt < max_retries:
            time.sleep(min(wait, max_wait_time))
            wait *= 2
    raise TeacherRequestError(f"no answer from {url} after {attempt + 1} attempts (last response: {last})")


def teacher_from_url(
    url: str,
    label_names: Sequence[str],
    answers: str = "top_k",
    top_k: int = 3,
    timeout: float = 60.0,
    max_retries: int = 6,
    base_wait_time: float = 1.0,
    max_wait_time: float = 16.0,
    headers: dict[str, str] | None = None,
):
    """A [`RemoteTeacher`] asking a URL in the HF classification protocol, a batch per request:
    `POST {"inputs": [...], "parameters": {"top_k": k}}` -> one list of `{"label", "score"}` per input (images as
    base64: a dataset's image files as they are stored, a PIL image as PNG). Failed requests are retried with backoff ([`post_with_backoff`]). `headers` carry e.g. a token.
    """
    client = http_module().Client(timeout=timeout, headers=headers)  # thread-safe: shared by the requests in flight

    def answer_batch(inputs: list, k: int) -> list:
        payload = {"inputs": [encode_input(value) for value in inputs], "parameters": {"top_k": k}}
        return post_with_backoff(client, url, payload, max_retries, base_wait_time, max_wait_time)

    return RemoteTeacher(answer_batch, label_names, answers, top_k, description=url, encoded_images=True)
