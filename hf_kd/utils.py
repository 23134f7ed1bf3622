"""Small helpers shared by the package: one atomic file writer, and what a full disk looks like."""

from __future__ import annotations

import errno
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
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(error):
            raise DiskFullError(f"Writing {path} failed: {disk_full_reason(error)}. The previous {path.name}, if "
                                "any, is intact (the new content went to a temporary file, now removed).",
                                path) from error  # fmt: skip
        raise
    return path


# A write that failed for lack of room: no space left, a file-size limit (RLIMIT_FSIZE, `ulimit -f`), a quota.
DISK_FULL_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "the file exceeds the file-size limit"}
DISK_FULL_ERRNOS[errno.EDQUOT] = "the disk quota is exceeded"
SHORT_WRITE = -1  # torch.save's PytorchStreamWriter does not say why a write came back short
# How libraries that do not raise OSError report them: safetensors (Rust's io errors), torch.save (a short write).
_DISK_FULL_TEXTS = {
    "os error 28": errno.ENOSPC, "No space left on device": errno.ENOSPC, "os error 27": errno.EFBIG,
    "File too large": errno.EFBIG, "os error 122": errno.EDQUOT, "Disk quota exceeded": errno.EDQUOT,
    "unexpected pos": SHORT_WRITE,
}  # fmt: skip


class DiskFullError(OSError):
    """A write failed for lack of room; the message names the file and what was left intact."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = path


def _disk_full_errno(error: BaseException | None) -> int | None:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            return error.errno
        text = str(error)
        for marker, number in _DISK_FULL_TEXTS.items():
            if marker in text:
                return number
        error = error.__cause__ or error.__context__
    return None


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` (or what caused it) is a write that failed for lack of space or over a file-size limit."""
    return isinstance(error, DiskFullError) or _disk_full_errno(error) is not None


def disk_full_reason(error: BaseException) -> str:
    """What the failed write says, e.g. `the file exceeds the file-size limit (EFBIG: ...)`."""
    number = _disk_full_errno(error)
    if number not in DISK_FULL_ERRNOS:
        return f"a write came back short: no space left, or over a file-size limit or quota ({error})"
    return f"{DISK_FULL_ERRNOS[number]} ({errno.errorcode[number]}: {error})"


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
