"""``infer.py --devices 2`` holds its output folder and stops after the batch in flight on SIGTERM.

One 2-process run (CPU, gloo) over 8 pictures, one per batch (4 batches per rank). The run is
``infer.py``'s own :func:`main` behind a small launch script (written to the test folder; Lightning
re-runs it for rank 1) that holds both ranks at their first batch:

- the launcher (rank 0) waits there for the test's go-ahead, so the test can start a second
  ``--devices 2`` run on the same folder while the first surely holds it: it must be refused
  (exit 3) naming the first run's pid and host;
- then the launcher sends itself SIGTERM in the middle of its first batch, as ``kill -TERM
  <launcher pid>`` would; rank 1, which got no signal, is held until rank 0's first record is
  journaled, so that it cannot finish its share before the stop is asked for.

Both ranks must stop after their batch in flight (2 records, 6 left), the run must exit 143 saying
how far it got, keep every finished output whole and journaled, leave no lock, stop flag or rank
journal, and take over the stale lock a killed run left before it. The same job run again (here,
in one process) finishes it with one record per image.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from infer_runs import (
    ROOT,
    assert_whole_and_journaled,
    infer_command,
    infer_env,
    make_read_only,
    pictures,
)
from infer_runs import save_checkpoint as save_explainer

from lcam.inference import main as infer_main
from lcam.inference.lock import LOCK

COUNT, SIDE = 8, 64
STALE = {"pid": 4242424, "host": "gone-host", "started": 0, "command": "infer.py (killed)"}

LAUNCH = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path

    from lcam.inference import main
    from lcam.inference.writer import OutputWriter

    gates = Path(os.environ["GATES"])  # every rank inherits it
    out = Path(sys.argv[sys.argv.index("--output") + 1])
    launcher = "LOCAL_RANK" not in os.environ  # Lightning sets it in the ranks it starts
    write_batch, calls = OutputWriter.write_batch, []


    def wait_for(ready, what):
        deadline = time.monotonic() + 60
        while not ready():
            if time.monotonic() > deadline:
                sys.exit(f"launch script: gave up waiting for {what}")
            time.sleep(0.01)


    def held_at_the_first_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1 and launcher:
            (gates / "ready").touch()
            wait_for((gates / "go").exists, "the go-ahead")
            os.kill(os.getpid(), signal.SIGTERM)  # mid-batch: this batch must still be written
        write_batch(self, *args, **kwargs)
        if len(calls) == 1 and not launcher:
            journal = out / "predictions.rank0.jsonl"
            wait_for(lambda: journal.is_file() and journal.stat().st_size > 0, "rank 0's record")


    OutputWriter.write_batch = held_at_the_first_batch
    sys.exit(main())
    """
)
DISTRIBUTED = ["--devices", "2", "--accelerator", "cpu", "--strategy", "ddp"]


def _start(command: list[str], **extra: str) -> subprocess.Popen:
    env = {**infer_env(), **extra}
    for key in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK"):
        env.pop(key, None)
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()[0][-4000:]
        assert time.monotonic() < deadline, f"{path.name} did not appear within {seconds} s"
        time.sleep(0.01)


def test_two_processes_hold_the_folder_and_stop_after_the_batch_in_flight_on_sigterm(
    tmp_path, capsys
) -> None:
    names = pictures(tmp_path / "in", COUNT, SIDE)
    out, gates = tmp_path / "out", tmp_path / "gates"
    gates.mkdir()
    out.mkdir()
    (out / LOCK).write_text(json.dumps(STALE))  # left by a killed run: no process holds it
    (tmp_path / "launch.py").write_text(LAUNCH)
    command = infer_command(save_explainer(tmp_path), tmp_path / "in", out)
    launch = [sys.executable, str(tmp_path / "launch.py"), *command[2:], *DISTRIBUTED]
    first = _start(launch, GATES=str(gates))
    second = None
    try:
        _wait_for(gates / "ready", first)  # the launcher is at its first batch, holding the folder
        second = _start([*command, *DISTRIBUTED])
        log, code = second.communicate(timeout=120)[0], second.returncode
        assert code == 3, log[-4000:]
        assert "in use by another infer.py run" in log, log[-4000:]
        assert f"pid {first.pid} on host {socket.gethostname()}" in log, log[-4000:]
        (gates / "go").touch()
        log = first.communicate(timeout=120)[0]
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()

    assert first.returncode == 143, log[-4000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log, log[-4000:]  # two processes really ran
    assert "taking over" in log and "pid 4242424 on host gone-host" in log, log[-4000:]
    # One batch per rank: the launcher's batch in flight, and rank 1's, which the flag stopped.
    message = f"stopped by SIGTERM: 2 explained, 0 already done, {COUNT - 2} left"
    assert message in log, log[-4000:]
    assert len(assert_whole_and_journaled(out, SIDE)) == 2
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".") or ".rank" in p.name]
    assert leftovers == [], leftovers

    assert infer_main(command[2:]) == 0
    assert f"{COUNT - 2} explained, 2 already done, 0 failed" in capsys.readouterr().out
    records = assert_whole_and_journaled(out, SIDE)
    assert sorted(record["name"] for record in records) == names  # one record per image
    assert not (out / LOCK).exists()


def test_two_processes_report_a_read_only_folder_in_one_line_and_a_rerun_finishes(
    tmp_path,
) -> None:
    names = pictures(tmp_path / "in", 4, SIDE)
    out = tmp_path / "out"
    out.mkdir()
    single = infer_command(save_explainer(tmp_path), tmp_path / "in", out)
    command = [*single, *DISTRIBUTED]
    undo = make_read_only(out)
    try:
        log = _start(command).communicate(timeout=120)[0]
    finally:
        subprocess.run(undo, check=True)
    errors = [line for line in log.splitlines() if line.startswith("infer.py: error:")]
    assert errors and "Traceback" not in log, log[-4000:]
    assert f"cannot write in {out}" in errors[0] and f"of {len(names)} images done" in errors[0]
    assert not list(out.iterdir())  # nothing, not even a partial file
    assert infer_main(single[2:]) == 0
    final = assert_whole_and_journaled(out, SIDE)
    assert sorted(record["name"] for record in final) == names
