"""Atomic writes: concurrent writers of one destination do not collide."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from lcam._io import atomic_write


def test_two_writers_of_one_file_both_finish_and_leave_one_whole_file(tmp_path) -> None:
    """Two runs sharing an output folder write the same overlay at the same time: each must
    have its own temporary file (a shared name made the second writer fail)."""
    destination = tmp_path / "overlays" / "epoch_000.png"
    started = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer(payload: bytes) -> None:
        def write(temporary: Path) -> None:
            temporary.write_bytes(payload[:1])
            started.wait()  # both temporary files exist before either is renamed
            time.sleep(0.05)
            with temporary.open("ab") as handle:
                handle.write(payload[1:])

        try:
            atomic_write(destination, write)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(bytes([n]) * 1000,)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    content = destination.read_bytes()
    assert content in (b"\x01" * 1000, b"\x02" * 1000)
    assert sorted(p.name for p in destination.parent.iterdir()) == ["epoch_000.png"]
