"""Two ``infer.py`` runs on one output folder: the second is refused, naming the first; the lock a
killed run left behind is taken over.

The first run is paused (SIGSTOP) while it holds the folder, so the second surely starts while
the first is alive, however loaded the machine is.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from infer_runs import (
    COUNT,
    ROOT,
    assert_whole_and_journaled,
    infer_command,
    infer_env,
    pictures,
    save_checkpoint,
    start,
)

from lcam.inference.lock import LOCK


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt"))


def _wait_for(condition, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert process.poll() is None, process.communicate()[1].decode()[-3000:]
        assert time.monotonic() < deadline, f"{what} within 120 s"
        time.sleep(0.005)


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, env=infer_env(), capture_output=True, timeout=240)


def test_a_second_run_on_a_busy_folder_is_refused_naming_the_first(tmp_path, checkpoint) -> None:
    names = pictures(tmp_path / "in")
    out = tmp_path / "out"
    command = infer_command(checkpoint, tmp_path / "in", out)
    first = start(command)
    try:
        _wait_for((out / LOCK).is_file, first, "the first run took no lock")
        first.send_signal(signal.SIGSTOP)
        second = _run(command)
        first.send_signal(signal.SIGCONT)
        first_out, first_err = first.communicate(timeout=240)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    err = second.stderr.decode()
    assert second.returncode == 3, err[-3000:]
    assert f"pid {first.pid} on host {socket.gethostname()}" in err, err[-3000:]
    assert "in use by another infer.py run" in err
    assert first.returncode == 0, first_err.decode()[-3000:]
    assert f"{COUNT} explained, 0 already done" in first_out.decode()  # nothing done twice
    records = assert_whole_and_journaled(out)
    assert sorted(record["name"] for record in records) == names
    assert not (out / LOCK).exists()


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, checkpoint) -> None:
    names = pictures(tmp_path / "in")
    out = tmp_path / "out"
    command = infer_command(checkpoint, tmp_path / "in", out)
    killed = start(command)
    journal = out / "predictions.jsonl"
    try:
        _wait_for(lambda: journal.is_file() and journal.stat().st_size > 0, killed, "no record")
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
    finally:
        if killed.poll() is None:
            killed.kill()
            killed.wait()
    assert json.loads((out / LOCK).read_text())["pid"] == killed.pid  # left behind
    done = len(assert_whole_and_journaled(out))

    rerun = _run(command)
    err = rerun.stderr.decode()
    assert rerun.returncode == 0, err[-3000:]
    assert "taking over" in err and f"pid {killed.pid} on host" in err, err[-3000:]
    assert f"{COUNT - done} explained, {done} already done" in rerun.stdout.decode()
    records = assert_whole_and_journaled(out)
    assert sorted(record["name"] for record in records) == names
    assert not (out / LOCK).exists()
