"""Two ``infer.py`` runs on one output folder: the second is refused, naming the first; the lock a
killed run left behind is taken over, and the rerun explains only what is left.

The first run is a real process, paused (SIGSTOP) while it holds the folder, so the second surely
starts while the first is alive, however loaded the machine is; the first is then killed
(SIGKILL: no clean-up at all) and a third run takes its lock over. The second and third runs run
in this process (the same :func:`main` ``infer.py`` calls).
"""

from __future__ import annotations

import json
import signal
import socket
import time

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


def test_a_busy_folder_is_refused_naming_its_run_and_a_killed_runs_lock_is_taken_over(
    tmp_path, capsys
) -> None:
    checkpoint = save_checkpoint(tmp_path)
    names = pictures(tmp_path / "in")
    out = tmp_path / "out"
    command = infer_command(checkpoint, tmp_path / "in", out)
    first = start(command)
    journal = out / "predictions.jsonl"
    try:
        deadline = time.monotonic() + 120
        while not (journal.is_file() and journal.stat().st_size > 0):
            assert first.poll() is None, first.communicate()[1].decode()[-3000:]
            assert time.monotonic() < deadline, "the first run journaled nothing within 120 s"
            time.sleep(0.005)
        first.send_signal(signal.SIGSTOP)  # alive, holding the folder, doing nothing
        done = len(assert_whole_and_journaled(out, writer_paused_or_killed=True))
        assert done < COUNT, "the first run finished before it could be paused"

        assert infer_main(command[2:]) == 3
        err = capsys.readouterr().err
        assert "in use by another infer.py run" in err, err[-3000:]
        assert f"pid {first.pid} on host {socket.gethostname()}" in err, err[-3000:]
        # the refused run wrote nothing
        assert len(assert_whole_and_journaled(out, writer_paused_or_killed=True)) == done

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert json.loads((out / LOCK).read_text())["pid"] == first.pid  # left behind
    done = len(assert_whole_and_journaled(out, writer_paused_or_killed=True))
    # Killed mid-write for sure: the takeover must remove what such a write leaves.
    (out / ".img99.jpg.map.npy.4242424-0badcafe.partial").write_bytes(b"half a map")

    assert infer_main(command[2:]) == 0
    captured = capsys.readouterr()
    assert "taking over" in captured.err and f"pid {first.pid} on host" in captured.err
    assert f"{COUNT - done} explained, {done} already done" in captured.out  # none twice
    records = assert_whole_and_journaled(out)
    assert sorted(record["name"] for record in records) == names
    assert not (out / LOCK).exists()
