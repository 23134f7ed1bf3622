"""One run per output directory at a time.

A run holds an OS file lock (`filelock`, `flock` on Unix) on `<output_dir>/.hf_kd_run.lock` from its first check to
its end; a second run into the same directory is refused at once, naming the holder that
`<output_dir>/.hf_kd_run.holder.json` describes (process id, host, start time, command). The OS drops the lock when
its process dies, however it dies (`kill -9` included), so a lock left by a killed run never blocks the next one: only
its stale holder file remains, and is replaced.

On release both files are removed (while the lock is still held), and the directory too when nothing else is left in
it: a run refused by a later check leaves the directory as it found it. Removing a lock file can race with a process
that opened it just before; [`RunLock.acquire`] therefore checks that the file it locked is still the one at the path,
and starts over otherwise.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

from ..utils import atomic_write

LOCK_FILE, HOLDER_FILE = ".hf_kd_run.lock", ".hf_kd_run.holder.json"
RUN_FILES = (LOCK_FILE, HOLDER_FILE)


class OutputDirInUseError(RuntimeError):
    """Another run holds the output directory."""


def _describe_holder(holder_file: Path) -> str:
    try:
        holder = json.loads(holder_file.read_text())
    except (OSError, ValueError):  # the holder is between taking the lock and writing this file
        return "another process (its holder file is not written yet)"
    return (
        f"process {holder.get('pid')} on host {holder.get('host')!r}, started {holder.get('started')} "
        f"(command: {holder.get('command')})"
    )


class RunLock:
    """The lock of one output directory, for the length of a run: `with RunLock(output_dir): ...`, or
    [`acquire`] / [`release`]. Raises [`OutputDirInUseError`] naming the holder when another process holds it."""

    def __init__(self, output_dir: str | os.PathLike):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LOCK_FILE
        self.holder_file = self.output_dir / HOLDER_FILE
        self._lock: FileLock | None = None
        self._created_dir = False

    @property
    def is_held(self) -> bool:
        return self._lock is not None and self._lock.is_locked

    def acquire(self) -> RunLock:
        self._created_dir = not self.output_dir.exists()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            lock = FileLock(self.path, timeout=0)
            try:
                lock.acquire()
            except Timeout:
                raise OutputDirInUseError(
                    f"The output directory {self.output_dir.absolute()} is in use by another run: "
                    f"{_describe_holder(self.holder_file)}. Wait for it to end, or choose another --output_dir "
                    "(two runs writing one directory would mix their models and report)."
                ) from None
            if self._still_at_path(lock):
                self._lock = lock
                break
            lock.release()  # locked a file a releasing run had just removed: take the one at the path now
        else:
            raise OutputDirInUseError(f"Could not take the lock {self.path}: it was replaced 10 times in a row.")
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        }
        atomic_write(self.holder_file, json.dumps(holder, indent=1))
        return self

    def _still_at_path(self, lock: FileLock) -> bool:
        fd = getattr(getattr(lock, "_context", None), "lock_file_fd", None)  # filelock keeps the descriptor here
        try:
            return fd is None or os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        if not self.is_held:
            return
        self.holder_file.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)  # while still held: see the module docstring
        self._lock.release(force=True)
        self._lock = None
        if self._created_dir and self.output_dir.is_dir() and not any(self.output_dir.iterdir()):
            self.output_dir.rmdir()

    def __enter__(self) -> RunLock:
        return self if self.is_held else self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()
