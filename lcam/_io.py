"""I/O helpers every layer may use: durable atomic writes, JSON lines, data-only loading, and
progress on stderr (:func:`progress`: a tqdm bar on a terminal, a line per N % in logs).

An output is written to a hidden temporary file of its own beside its destination, flushed to disk
(``fsync``), renamed over the destination (``os.replace``, atomic on POSIX) and the folder entry
is flushed too, so a reader sees the old file or the whole new one, even after a power loss.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import secrets
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

import torch
from tqdm.auto import tqdm

__all__ = [
    "WRITE_ERRORS",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_folder",
    "load_data",
    "progress",
    "read_jsonl",
    "remove_temporaries",
    "temporary_name",
    "write_jsonl",
]

# The errors of a folder that cannot take an output (full disk or quota, read-only file system,
# no permission): a run reports them in one line naming the folder instead of a traceback.
WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk; a no-op where folders cannot be
    opened (Windows)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Create ``path`` atomically and durably: ``write(temporary)`` fills a temporary file.

    Args:
        path: the destination; its folder is created if missing.
        write: called with the temporary path; it must create that file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own per call: two writers of one destination (two runs sharing an output
    # folder, two threads) must not write into, or delete, each other's temporary file.
    temporary = path.with_name(temporary_name(path.name))
    try:
        write(temporary)
        with temporary.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_folder(path.parent)
    return path


TEMPORARY = re.compile(r"^\..+\.\d+-[0-9a-f]{8}\.partial$")
"""The names :func:`atomic_write` gives its temporary files (and nothing a user would name)."""


def temporary_name(name: str) -> str:
    """``.<name>.<pid>-<8 hex>.partial``: the temporary file of one :func:`atomic_write` call."""
    return f".{name}.{os.getpid()}-{secrets.token_hex(4)}.partial"


def remove_temporaries(folder: str | Path) -> int:
    """Delete the temporary files :func:`atomic_write` calls left under ``folder`` when their
    process was killed (SIGKILL, power loss); only for a folder no live writer uses (its owner
    holds the folder's lock). Returns how many were removed."""
    removed = 0
    for path in Path(folder).rglob(".*.partial"):
        if TEMPORARY.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda temporary: temporary.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of UTF-8 ``text``."""
    return atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every complete JSON line of ``path`` (none if it does not exist).

    A line cut short by a killed writer is skipped: its work is redone by the next run.
    """
    path = Path(path)
    records: list[dict[str, Any]] = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                records.append(json.loads(line))
    return records


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write ``records`` as JSON lines, atomically (see :func:`atomic_write`)."""
    return atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in records))


def load_data(path: str | Path, what: str = "a checkpoint") -> Any:
    """``torch.load`` with ``weights_only=True`` on the CPU: tensors and plain containers only.

    Args:
        path: the file.
        what: what the file should be, with its article, for the message (``"an lcam
            checkpoint"``).

    Raises:
        ValueError: the file holds anything else (pickled code); the message names the file.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - re-raised with the file named
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(
            f"{str(path)!r} is not {what} (reading it as data with weights_only=True "
            f"failed: {first})"
        ) from error


# A progress line in logs: "explaining: 40% (8/20 img) in 00:03, ETA 00:04".
PROGRESS_LINE = (
    "{desc}: {percentage:.0f}% ({n_fmt}/{total_fmt} {unit}) in {elapsed}, ETA {remaining}"
)


class _ProgressLines(tqdm):
    """A tqdm that prints one plain line to ``log`` each time another ``every`` of the total is
    done, instead of redrawing a bar (which fills a log file with carriage returns)."""

    def __init__(self, *, log: TextIO, every: float, **kwargs: Any) -> None:
        self._log, self._every, self._reported = log, every, 0
        # tqdm's own drawing goes nowhere; every update is looked at (no rate limit).
        super().__init__(file=io.StringIO(), mininterval=0, miniters=1, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """Print the line of the last ``every`` step reached, if not printed yet."""
        if not self.total:
            return True
        reached = int(self.n / self.total / self._every + 1e-9)
        if reached > self._reported:
            self._reported = reached
            line = self.format_meter(**{**self.format_dict, "bar_format": PROGRESS_LINE})
            print(line, file=self._log, flush=True)
        return True


def progress(
    total: int,
    description: str,
    unit: str = "it",
    *,
    enabled: bool = True,
    every: float = 0.1,
    stream: TextIO | None = None,
) -> tqdm:
    """The progress of ``total`` items, shown as suits where ``stream`` goes; ``.update(n)`` as
    items finish, ``.close()`` (or ``with``) at the end.

    On a terminal: a tqdm bar with the rate and the time left. Anywhere else (a log file, a
    scheduler's output, a pipe): one line each time another ``every`` of the total is done,
    ``"<description>: 40% (8/20 <unit>) in 00:03, ETA 00:04"``. Disabled: nothing.

    Args:
        total: the number of items.
        description: what is being done ("explaining").
        unit: what an item is ("img").
        enabled: ``False`` shows nothing (``--no-progress``).
        every: fraction of the total between two lines (0.1: every 10 %).
        stream: where to show it (default ``sys.stderr``, looked up at call time).
    """
    stream = sys.stderr if stream is None else stream
    if not enabled:
        return tqdm(total=total, disable=True)
    if stream.isatty():
        return tqdm(total=total, desc=description, unit=unit, file=stream, dynamic_ncols=True)
    return _ProgressLines(log=stream, every=every, total=total, desc=description, unit=unit)
