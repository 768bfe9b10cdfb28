"""infer.py killed mid-run (SIGKILL, no clean-up): every file under a final name is complete, the
journal holds whole lines naming whole files, and a re-run finishes the job."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
from infer_runs import ROOT, infer_command, infer_env, pictures, save_checkpoint, start
from PIL import Image


def test_killed_run_leaves_only_complete_files_and_a_rerun_finishes(tmp_path: Path) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    count, side = 40, 384
    pictures(folder, count, side)
    command = infer_command(save_checkpoint(tmp_path), folder, out)
    process = start(command)
    deadline = time.monotonic() + 60
    try:
        journal = out / "predictions.jsonl"
        # Kill once a record is journaled (after its files): the journal is then checked too.
        while not (journal.is_file() and journal.stat().st_size > 0):
            assert process.poll() is None, b"".join(process.communicate()).decode()
            assert time.monotonic() < deadline, "no record journaled within 60 s"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    maps = sorted(out.glob("*.npy"))
    assert 0 < len(maps) < count, f"kill came too late to test anything: {len(maps)} maps"
    for path in maps:  # every file under a final name is complete
        assert np.load(path).shape == (side, side), path
    for path in out.glob("*.png"):
        with Image.open(path) as image:
            image.load()
            assert image.size == (side, side), path
    # The journal right after the kill: whole JSON lines, each naming files that are complete.
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert 0 < len(lines) <= len(maps)  # a record only once its files are in place
    for line in lines:
        record = json.loads(line)  # raises on a cut line
        assert np.load(out / record["map"]).shape == (side, side), record
        with Image.open(out / record["overlay"]) as image:
            image.load()
            assert image.size == (side, side), record

    env = infer_env()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = (out / "predictions.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert sorted(r["name"] for r in records) == [f"img{i:02d}.jpg" for i in range(count)]
    for index in range(count):
        assert np.load(out / f"img{index:02d}.jpg.map.npy").shape == (side, side)
        with Image.open(out / f"img{index:02d}.jpg.overlay.png") as image:
            image.load()
    assert not list(out.rglob("*.partial")) and not list(out.glob(".claims*"))
