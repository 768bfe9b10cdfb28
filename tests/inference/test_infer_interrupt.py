"""SIGTERM and SIGINT stop ``infer.py`` after the batch in flight.

A run over 16 pictures (one per batch) is signalled: it must exit 143 / 130 (not 0), say how far
it got, keep every finished output whole and journaled, and leave no partial file and no lock;
the same command then finishes the job with exactly one record per image.

One real ``infer.py`` process covers SIGTERM from outside (sent once its first record is
journaled; the process is paused meanwhile so that it cannot finish the folder first on a loaded
machine). SIGINT is sent by the process to itself as its first batch is written, in this process
(the same :func:`main` ``infer.py`` calls), so it must stop with exactly that batch done. The
reruns run in this process too.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from infer_runs import (
    COUNT,
    assert_whole_and_journaled,
    infer_command,
    pictures,
    save_checkpoint,
    start,
)

from lcam.inference import main as infer_main
from lcam.inference.lock import LOCK
from lcam.inference.writer import OutputWriter


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt"))


def _rerun_finishes(command: list[str], out: Path, names: list[str], done: int, capsys) -> None:
    """The same command, run again (here), explains exactly the images left."""
    assert infer_main(command[2:]) == 0
    assert f"{COUNT - done} explained, {done} already done" in capsys.readouterr().out
    final = assert_whole_and_journaled(out)
    assert sorted(record["name"] for record in final) == names
    assert not (out / LOCK).exists()


def test_sigterm_stops_infer_py_after_the_batch_in_flight_and_a_rerun_finishes(
    tmp_path, checkpoint, capsys
) -> None:
    names = pictures(tmp_path / "in")
    out = tmp_path / "out"
    command = infer_command(checkpoint, tmp_path / "in", out)
    process = start(command)
    try:
        journal, deadline = out / "predictions.jsonl", time.monotonic() + 120
        while not (journal.is_file() and journal.stat().st_size > 0):
            assert process.poll() is None, process.communicate()[1].decode()[-3000:]
            assert time.monotonic() < deadline, "no record journaled within 120 s"
            time.sleep(0.005)
        process.send_signal(signal.SIGSTOP)  # held where it is while the signal is queued
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGCONT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    err = err.decode()
    assert process.returncode == 143, err[-3000:]
    assert "stopped by SIGTERM" in err and "left" in err, err[-3000:]
    records = assert_whole_and_journaled(out)
    assert 0 < len(records) < COUNT, f"the stop came too late to test anything: {len(records)}"
    assert f"{len(records)} explained, 0 already done, {COUNT - len(records)} left" in err, err
    assert not (out / LOCK).exists()
    _rerun_finishes(command, out, names, len(records), capsys)


def test_sigint_stops_infer_after_the_batch_in_flight_and_a_rerun_finishes(
    tmp_path, checkpoint, monkeypatch, capsys
) -> None:
    names = pictures(tmp_path / "in")
    out = tmp_path / "out"
    command = infer_command(checkpoint, tmp_path / "in", out)
    write_batch, written = OutputWriter.write_batch, []

    def write_then_ctrl_c(self, *args, **kwargs) -> None:
        write_batch(self, *args, **kwargs)
        written.append(1)
        if len(written) == 1:  # Ctrl-C once (twice stops at once), as the first batch is written
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(OutputWriter, "write_batch", write_then_ctrl_c)
    assert infer_main(command[2:]) == 130
    err = capsys.readouterr().err
    assert "stopped by SIGINT: 1 explained, 0 already done, 15 left" in err, err[-3000:]
    assert len(assert_whole_and_journaled(out)) == 1
    assert not (out / LOCK).exists()

    monkeypatch.setattr(OutputWriter, "write_batch", write_batch)
    _rerun_finishes(command, out, names, 1, capsys)
