"""SIGTERM and SIGINT stop ``infer.py`` after the batch in flight.

A run over 16 pictures (one per batch) is signalled once its first record is journaled: it must
exit 143 / 130 (not 0), say how far it got, keep every finished output whole and journaled, and
leave no partial file and no lock; the same command then finishes the job with exactly one
record per image.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lcam
from lcam.inference.lock import LOCK

ROOT = Path(__file__).resolve().parents[2]
COUNT, SIDE = 16, 128


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    backbone = lcam.FrozenBackbone("lcam.models.TinyResNet", num_classes=4, input_size=32)
    explainer = lcam.build_explainer(backbone)
    torch.manual_seed(0)
    torch.nn.init.normal_(explainer.head.conv.weight)
    return lcam.save_explainer(explainer, tmp_path_factory.mktemp("ckpt") / "explainer.pt")


def pictures(folder: Path, count: int = COUNT, side: int = SIDE) -> list[str]:
    """``count`` noisy ``side`` x ``side`` JPEGs in ``folder``; their names."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    names = []
    for index in range(count):
        picture = (ramp[None, :, None] + rng.normal(0, 20, (side, side, 3))).clip(0, 255)
        name = f"img{index:02d}.jpg"
        Image.fromarray(picture.astype(np.uint8)).save(folder / name, quality=80)
        names.append(name)
    return names


def infer_command(checkpoint: Path, folder: Path, out: Path) -> list[str]:
    """``infer.py`` over ``folder`` into ``out``, one image per batch, no workers."""
    return [
        sys.executable,
        str(ROOT / "infer.py"),
        *("--checkpoint", str(checkpoint), "--input", str(folder), "--output", str(out)),
        *("--batch-size", "1", "--num-workers", "0", "--no-progress"),
    ]


def infer_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        command, cwd=ROOT, env=infer_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def assert_whole_and_journaled(out: Path) -> list[dict]:
    """Every record names two whole files; no temporary file is left; the records."""
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    for record in records:
        assert np.load(out / record["map"]).shape == (SIDE, SIDE), record
        with Image.open(out / record["overlay"]) as image:
            image.load()
            assert image.size == (SIDE, SIDE), record
    assert not list(out.glob(".*.partial")), sorted(p.name for p in out.iterdir())
    return records


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
