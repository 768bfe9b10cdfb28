"""One run at a time per output folder: :class:`FolderLock` (``<output>/.infer.lock``).

The lock is an exclusive ``flock`` on the file, which the kernel releases when its process
ends, however it ends: a lock file left by a killed run is free and the next run takes it over
(it says whose it was). The file names its owner (pid, host, start time, command) so a second
run can say which run holds the folder. It is removed when the owner finishes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from lcam._io import remove_temporaries

__all__ = ["LOCK", "FolderBusyError", "FolderLock", "describe_owner"]

LOCK = ".infer.lock"


class FolderBusyError(RuntimeError):
    """Another live run holds the folder's lock; the message names it."""


def describe_owner(owner: dict[str, Any]) -> str:
    """``"pid 123 on host h (started 2024-01-01 12:00:00: infer.py ...)"``."""
    if not owner:
        return "a run that left no details"
    started = owner.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    return (
        f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')} (started {when}: "
        f"{owner.get('command', '?')})"
    )


def _read_owner(descriptor: int) -> dict[str, Any]:
    os.lseek(descriptor, 0, os.SEEK_SET)
    text = os.read(descriptor, 65536).decode("utf-8", errors="replace")
    with contextlib.suppress(json.JSONDecodeError):
        owner = json.loads(text)
        if isinstance(owner, dict):
            return owner
    return {}


class FolderLock:
    """Hold ``<folder>/.infer.lock`` for the life of a run (a context manager).

    Args:
        folder: the output folder (created if missing).

    Attributes:
        taken_over: the owner details of a previous run that ended without releasing the lock
            (killed), ``None`` if the lock was free.
        removed_temporaries: temporary files the killed run's writes left (``.*.partial``),
            removed on a takeover since no live run writes them.

    Raises:
        FolderBusyError: on entry, when a live run holds the lock.
        OSError: the folder cannot be written (see :data:`lcam._io.WRITE_ERRORS`).
    """

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LOCK
        self.taken_over: dict[str, Any] | None = None
        self.removed_temporaries = 0
        self._descriptor: int | None = None

    def __enter__(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(descriptor)
                os.close(descriptor)
                raise FolderBusyError(
                    f"{self.path.parent} is in use by another infer.py run: "
                    f"{describe_owner(owner)}; wait for it to finish, or choose another --output "
                    f"(a lock whose run was killed is taken over: {self.path})"
                ) from None
            except BaseException:
                os.close(descriptor)
                raise
            # Locked: but if the owner removed the file meanwhile, this lock is on a dead inode.
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(descriptor).st_ino == os.stat(self.path).st_ino:
                    break
            os.close(descriptor)
        self._descriptor = descriptor
        previous = _read_owner(descriptor)
        self.taken_over = previous or None
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "command": " ".join(["infer.py", *sys.argv[1:]])[:500],
        }
        try:
            os.ftruncate(descriptor, 0)
            os.lseek(descriptor, 0, os.SEEK_SET)
            os.write(descriptor, json.dumps(owner).encode())
            os.fsync(descriptor)
        except BaseException:
            self._release()
            raise
        if self.taken_over is not None:  # its owner was killed mid-write: no one writes them now
            self.removed_temporaries = remove_temporaries(self.path.parent)
        return self

    def report_takeover(self) -> None:
        """Say on stderr whose lock was taken over, if any (see :attr:`taken_over`)."""
        if self.taken_over is not None:
            print(
                f"taking over {self.path} from a run that ended without releasing it: "
                f"{describe_owner(self.taken_over)}",
                file=sys.stderr,
            )

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._release()

    def _release(self) -> None:
        if self._descriptor is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # before unlocking: a waiting run then finds the file gone
        os.close(self._descriptor)  # releases the flock
        self._descriptor = None
