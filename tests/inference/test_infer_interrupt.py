"""SIGTERM and SIGINT stop ``infer.py`` after the batch in flight.

A run over 16 pictures (one per batch) is signalled once its first record is journaled: it must
exit 143 / 130 (not 0), say how far it got, keep every finished output whole and journaled, and
leave no partial file and no lock; the same command then finishes the job with exactly one
record per image.
"""

from __future__ import annotations

import signal
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


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_after_the_batch_in_flight_and_a_rerun_finishes(
    tmp_path, checkpoint, signum, code
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
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    err = err.decode()
    assert process.returncode == code, err[-3000:]
    assert f"stopped by {signal.Signals(signum).name}" in err and "left" in err, err[-3000:]
    records = assert_whole_and_journaled(out)
    assert 0 < len(records) < COUNT, f"the stop came too late to test anything: {len(records)}"
    assert not (out / LOCK).exists()

    rerun = subprocess.run(command, cwd=ROOT, env=infer_env(), capture_output=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr.decode()[-3000:]
    assert f"{COUNT - len(records)} explained, {len(records)} already done" in rerun.stdout.decode()
    final = assert_whole_and_journaled(out)
    assert sorted(record["name"] for record in final) == names
