"""Shared builders of the ``infer.py`` run tests: a checkpoint, pictures, the command, and the
check that every journaled record names whole files and no temporary file is left."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lcam

ROOT = Path(__file__).resolve().parents[2]
COUNT, SIDE = 16, 128


def save_checkpoint(folder: Path) -> Path:
    """A TinyResNet (4 classes, 32 px) explainer with a random head, saved in ``folder``."""
    backbone = lcam.FrozenBackbone("lcam.models.TinyResNet", num_classes=4, input_size=32)
    explainer = lcam.build_explainer(backbone)
    torch.manual_seed(0)
    torch.nn.init.normal_(explainer.head.conv.weight)
    return lcam.save_explainer(explainer, folder / "explainer.pt")


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


def assert_whole_and_journaled(
    out: Path, side: int = SIDE, writer_paused_or_killed: bool = False
) -> list[dict]:
    """Every record names two whole ``side``-pixel files; no temporary file is left (unless a
    writer was paused or killed mid-write: its file is then never journaled); the records."""
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    for record in records:
        assert np.load(out / record["map"]).shape == (side, side), record
        with Image.open(out / record["overlay"]) as image:
            image.load()
            assert image.size == (side, side), record
    if not writer_paused_or_killed:
        assert not list(out.glob(".*.partial")), sorted(p.name for p in out.iterdir())
    return records


def make_read_only(folder: Path) -> list[str]:
    """The command that undoes it; skips when this user can write anyway."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return ["chmod", "755", str(folder)]
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: no way to make a read-only folder")
    made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {made.stderr.strip()}")
    return ["chattr", "-i", str(folder)]
