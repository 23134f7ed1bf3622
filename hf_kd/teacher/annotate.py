"""Annotation as a resumable job: a black-box teacher's answers about a dataset, written to disk as they come.

[`annotate_with_teacher`] asks a [`RemoteTeacher`] about every example of a dataset, a batch per request, with a
bounded number of requests in flight. Each answered batch is written at once to its own shard file (`np.savez`
to a temporary name, then `os.replace`: a shard is either whole or absent), so a crash, a `kill -9` or a rate limit
loses at most the requests in flight: run the same call again and it asks only about the examples without a
shard. Retries with backoff on 429 / 5xx / timeouts happen in the teacher's transport (`http_backoff` for a URL);
a request that still fails stops the job with the examples it held and the last response.

The job's directory is keyed like `add_teacher_logits`' cache: the dataset's fingerprint, the input column and the
teacher (source, kind of answer, k, classes); by default it lives in the datasets cache
(`<HF_DATASETS_CACHE>/hf_kd_teacher_answers/<key>`). The finished columns are added with a fingerprint derived
from the same key, and a finished job is read back from its shards, not asked again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from .remote import RemoteTeacher, TeacherAnswerError, TeacherRequestError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_SHARD = re.compile(r"shard-(\d{9})-(\d{9})\.npz$")


@dataclass
class AnnotationStats:
    """What a job did: `queries` examples asked in `requests` requests by this call, `reused` examples already on
    disk, `num_examples` in all, and the time this call took."""

    num_examples: int = 0
    queries: int = 0
    requests: int = 0
    reused: int = 0
    seconds: float = 0.0
    directory: str = ""
    shards: list = field(default_factory=list, repr=False)


def job_key(dataset, input_column: str, teacher: RemoteTeacher) -> str:
    from datasets.fingerprint import Hasher

    return Hasher.hash(["hf_kd-answers-v1", dataset._fingerprint, input_column, teacher.cache_key()])


def default_job_dir(key: str) -> Path:
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "hf_kd_teacher_answers" / key


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _open_job(directory: Path, key: str, num_examples: int, description: str) -> dict[int, int]:
    """The job's directory (created with its manifest, or checked against it), and the shards already written
    (`start -> stop`)."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest_path = directory / MANIFEST
    manifest = {"key": key, "num_examples": num_examples, "teacher": description}
    if manifest_path.exists():
        found = json.loads(manifest_path.read_text())
        if found.get("key") != key or found.get("num_examples") != num_examples:
            raise ValueError(
                f"{directory} holds the answers of another job (teacher {found.get('teacher')!r}, "
                f"{found.get('num_examples')} examples; or the dataset's fingerprint differs): give another output_dir, "
                "or remove it."
            )
    else:
        _atomic_write(manifest_path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))
    done = {}
    for path in directory.iterdir():
        if match := _SHARD.match(path.name):
            done[int(match.group(1))] = int(match.group(2))
    return done


def _missing_ranges(done: dict[int, int], num_examples: int, batch_size: int) -> list[tuple[int, int]]:
    """The `[start, stop)` ranges no shard covers, cut into batches."""
    covered = np.zeros(num_examples, dtype=bool)
    for start, stop in done.items():
        covered[start:stop] = True
    ranges, index = [], 0
    while index < num_examples:
        if covered[index]:
            index += 1
            continue
        stop = index
        while stop < num_examples and not covered[stop] and stop - index < batch_size:
            stop += 1
        ranges.append((index, stop))
        index = stop
    return ranges


def _save_shard(path: Path, answers: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as file:  # a file object: np.savez would append ".npz" to a path
        np.savez(file, **answers)


def _read_shards(directory: Path, num_examples: int) -> dict[str, np.ndarray]:
    columns: dict[str, np.ndarray] = {}
    for path in sorted(directory.iterdir()):
        if not (match := _SHARD.match(path.name)):
            continue
        start, stop = int(match.group(1)), int(match.group(2))
        with np.load(path) as shard:
            for name in shard.files:
                if name not in columns:
                    columns[name] = np.zeros((num_examples, *shard[name].shape[1:]), dtype=shard[name].dtype)
                columns[name][start:stop] = shard[name]
    return columns


def _ask(teacher: RemoteTeacher, dataset, input_column: str, start: int, stop: int) -> dict[str, np.ndarray]:
    inputs = dataset[start:stop][input_column]
    try:
        return teacher.ask(inputs, start)
    except TeacherAnswerError:
        raise
    except Exception as error:
        raise TeacherRequestError(
            f"the teacher {teacher.description} did not answer examples {start}..{stop - 1}: {error}"
        ) from error


def run_annotation(dataset, teacher: RemoteTeacher, input_column: str, directory: Path, key: str,
                   batch_size: int, max_in_flight: int, desc: str) -> AnnotationStats:  # fmt: skip
    """Ask about every example without a shard in `directory`, writing each answered batch as its shard."""
    from huggingface_hub.utils import tqdm

    began, n = time.perf_counter(), len(dataset)
    done = _open_job(directory, key, n, teacher.description)
    todo = _missing_ranges(done, n, batch_size)
    stats = AnnotationStats(num_examples=n, reused=n - sum(stop - start for start, stop in todo), directory=str(directory))
    source = dataset.select_columns([input_column])
    feature = source.features[input_column]
    if teacher.encoded_images and getattr(feature, "decode", False) and type(feature).__name__ == "Image":
        source = source.cast_column(input_column, type(feature)(decode=False))  # sent as stored, not re-encoded
    with tqdm(total=n, initial=stats.reused, desc=desc, unit="ex") as progress, ThreadPoolExecutor(max_in_flight) as pool:  # fmt: skip
        pending, queue = {}, list(reversed(todo))
        try:
            while queue or pending:
                while queue and len(pending) < max_in_flight:  # bounded: at most max_in_flight requests out
                    start, stop = queue.pop()
                    pending[pool.submit(_ask, teacher, source, input_column, start, stop)] = (start, stop)
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    start, stop = pending.pop(future)
                    answers = future.result()  # raises the request's error, naming its examples
                    path = directory / f"shard-{start:09d}-{stop:09d}.npz"
                    _atomic_write(path, partial(_save_shard, answers=answers))
                    stats.queries += stop - start
                    stats.requests += 1
                    progress.update(stop - start)
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    stats.seconds = time.perf_counter() - began
    return stats


def annotate_with_teacher(
    dataset,
    teacher: RemoteTeacher,
    input_column: str,
    output_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    max_in_flight: int = 4,
    desc: str = "Teacher answers",
    return_stats: bool = False,
):
    """
    The dataset with a black-box teacher's answers added as columns (`teacher_probs`, `teacher_top_k_*` or
    `teacher_label`, by `teacher.answers`), asked for once and kept on disk.

    Args:
        dataset (`datasets.Dataset`): the examples, with their raw inputs (decoded images, or texts) in `input_column`.
        teacher ([`RemoteTeacher`]): what answers (see [`hf_kd.teacher.remote`]).
        input_column (`str`): the column sent to the teacher.
        output_dir (`str`, *optional*): the job's directory (shards and manifest). Default: in the datasets cache,
            keyed by the dataset's fingerprint and the teacher.
        batch_size (`int`, *optional*, defaults to 64): examples per request.
        max_in_flight (`int`, *optional*, defaults to 4): requests sent before the first answer comes back.
        desc (`str`): the progress bar's label.
        return_stats (`bool`): also return the [`AnnotationStats`] (queries made, examples reused from disk).

    Raises:
        [`TeacherRequestError`]: a request failed after its retries (the examples it held and the last response).
        [`TeacherAnswerError`]: an answer cannot be used (the example's index and why).
    """
    from datasets.fingerprint import Hasher

    if input_column not in dataset.column_names:
        raise ValueError(f"input_column {input_column!r} is not a column of the dataset: {dataset.column_names}.")
    if not isinstance(batch_size, int) or batch_size < 1 or not isinstance(max_in_flight, int) or max_in_flight < 1:
        raise ValueError(f"batch_size and max_in_flight must be integers >= 1, got {batch_size!r} and {max_in_flight!r}.")  # fmt: skip
    key = job_key(dataset, input_column, teacher)
    directory = Path(output_dir) if output_dir is not None else default_job_dir(key)
    stats = run_annotation(dataset, teacher, input_column, directory, key, batch_size, max_in_flight, desc)
    logger.info(
        f"{desc}: {stats.queries} examples asked in {stats.requests} requests, {stats.reused} already answered "
        f"({directory})."
    )
    result = dataset
    for name, values in _read_shards(directory, len(dataset)).items():
        if name in result.column_names:
            result = result.remove_columns(name)
        # Fingerprinted by the job's key, as add_teacher_logits' column is: the same answers, the same dataset.
        result = result.add_column(name, list(values), new_fingerprint=Hasher.hash([key, name]))
    return (result, stats) if return_stats else result
