"""Small helpers shared by the package: one atomic file writer."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def _current_umask() -> int:
    """The process umask. Linux exposes it read-only in /proc; elsewhere `os.umask` must set it to read it."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[BinaryIO], None]) -> Path:
    """
    Write `data` to `path` so that a reader (or a crash) sees the old file or the new one, never half of one: the
    bytes go to a temporary file in the same directory, which is flushed, given the mode a plain `open(path, "w")`
    would give (`0o666` less the umask: `mkstemp`'s own is `0o600`, unreadable to other users) and renamed into place.

    Args:
        path: The file to write; its directory is created when missing.
        data: The content: `bytes`, `str` (written as UTF-8), or a function that writes into a binary file object
            (e.g. `lambda f: figure.savefig(f, format="png")`).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def remove_if_left_empty(path: str | os.PathLike) -> Iterator[None]:
    """Remove the directory `path` when the block fails and leaves it empty (e.g. created by a `Trainer` that was
    then refused): a failed run leaves no empty directory behind."""
    try:
        yield
    except BaseException:
        if os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)
        raise
