"""``infer.py --devices 2`` (Lightning predict, 2 CPU processes, gloo) writes what one process does.

Two multi-process runs start at once (4 processes on the shared cores; most of each run is Python
start-up), each in a subprocess because Lightning re-launches the script for rank 1:

- ``fresh``: 10 images of different sizes into an empty folder; must exit 0, explain every image
  exactly once (5 per rank, one record each), and give the single-process maps.
- ``resumed``: the same images plus an unreadable file, into a folder a single-process run
  filled, then damaged as an interrupted run would leave it: some outputs missing (those images
  must be redone) and some records still in a per-rank journal (``predictions.rank1.jsonl``, which
  must count as done and be merged). Must exit 1, redo only the missing images and list the bad
  file once in ``errors.jsonl``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lcam
from lcam.inference import main as infer_main

ROOT = Path(__file__).resolve().parents[2]
NUM_IMAGES = 10
REDONE = ("img1.png", "nested/img4.png", "img7.png")  # outputs removed before the resumed run
JOURNALED = ("img0.png", "img5.png")  # records moved to a leftover per-rank journal


def _write_images(folder: Path) -> list[str]:
    """10 PNGs of different sizes (RGB and grayscale, one in a subfolder); their output names."""
    rng = np.random.default_rng(0)
    names = []
    for index in range(NUM_IMAGES):
        name = f"nested/img{index}.png" if index == 4 else f"img{index}.png"
        shape = (18 + 5 * index, 40 - 2 * index) + (() if index % 3 == 2 else (3,))
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(path)
        names.append(name)
    return names


def _common(explainer: Path, inputs: Path, output: Path) -> list[str]:
    return [
        "--checkpoint",
        str(explainer),
        "--input",
        str(inputs),
        "--output",
        str(output),
        "--num-workers",
        "0",
        "--batch-size",
        "3",
        "--no-progress",
    ]


def _records(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]


def _leftovers(output: Path) -> list[Path]:
    return [*output.glob("*.rank*.jsonl"), *output.glob(".claims*"), *output.rglob("*.partial")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Prepare the folders, start both multi-process runs, and run one process meanwhile."""
    root = tmp_path_factory.mktemp("ddp_infer")
    explainer = lcam.save_explainer(
        lcam.build_explainer(
            lcam.FrozenBackbone("lcam.models.TinyResNet", num_classes=4, input_size=32)
        ),
        root / "explainer.pt",
    )
    names = _write_images(root / "good")
    shutil.copytree(root / "good", root / "with_bad")
    (root / "with_bad" / "bad.png").write_bytes(b"not an image")

    # The single-process reference; then the resumed run's folder, damaged as described above.
    assert infer_main(_common(explainer, root / "good", root / "single")) == 0
    resumed = root / "resumed"
    shutil.copytree(root / "single", resumed)
    for name in REDONE:
        (resumed / f"{name}.map.npy").unlink()
    lines = (resumed / "predictions.jsonl").read_text().splitlines(keepends=True)
    journaled = [line for line in lines if json.loads(line)["name"] in JOURNALED]
    (resumed / "predictions.jsonl").write_text("".join(x for x in lines if x not in journaled))
    (resumed / "predictions.rank1.jsonl").write_text("".join(journaled))
    untouched = {
        name: (resumed / f"{name}.map.npy").stat().st_mtime_ns
        for name in names
        if name not in REDONE
    }

    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    for key in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK"):
        env.pop(key, None)
    distributed = ["--devices", "2", "--accelerator", "cpu", "--strategy", "ddp"]
    started = {
        run: subprocess.Popen(
            [sys.executable, str(ROOT / "infer.py"), *_common(explainer, inputs, output)]
            + distributed,
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for run, inputs, output in [
            ("fresh", root / "good", root / "fresh"),
            ("resumed", root / "with_bad", resumed),
        ]
    }
    try:
        finished = {
            run: (p.communicate(timeout=240)[0], p.returncode) for run, p in started.items()
        }
    finally:
        for process in started.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return {"root": root, "names": names, "untouched": untouched, **finished}


def _per_rank(log: str) -> list[int]:
    """Images each rank explained, from the summary line ``N explained (a + b by 2 processes)``."""
    match = re.search(r"(\d+) explained \((\d+) \+ (\d+) by 2 processes\)", log)
    assert match, log[-4000:]
    counts = [int(match.group(2)), int(match.group(3))]
    assert sum(counts) == int(match.group(1))
    return counts


def test_two_processes_write_every_image_once_with_the_single_process_maps(runs) -> None:
    log, code = runs["fresh"]
    root, names = runs["root"], runs["names"]
    assert code == 0, log[-4000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log, log[-4000:]  # two processes really ran
    # Each rank's journal had one record per image it explained: 5 + 5, nothing done twice.
    assert _per_rank(log) == [5, 5]
    fresh, single = _records(root / "fresh"), _records(root / "single")
    assert [r["name"] for r in fresh] == [r["name"] for r in single]  # input order, no repeats
    assert sorted(r["name"] for r in fresh) == sorted(names)
    for ours, reference in zip(fresh, single, strict=True):
        assert ours["target"] == reference["target"] and ours["method"] == "lcam_fm"
        np.testing.assert_allclose(
            [c["probability"] for c in ours["top5"]],
            [c["probability"] for c in reference["top5"]],
            atol=1e-5,
        )
        ours_map = np.load(root / "fresh" / ours["map"])
        assert ours_map.dtype == np.float32
        np.testing.assert_allclose(ours_map, np.load(root / "single" / ours["map"]), atol=1e-5)
        assert (root / "fresh" / ours["overlay"]).is_file()
    assert not _leftovers(root / "fresh")
    assert not (root / "fresh" / "errors.jsonl").exists()


def test_a_resumed_run_redoes_only_missing_images_and_reports_a_bad_file_once(runs) -> None:
    log, code = runs["resumed"]
    resumed = runs["root"] / "resumed"
    assert code == 1, log[-4000:]
    assert sum(_per_rank(log)) == len(REDONE)
    assert f"{NUM_IMAGES - len(REDONE)} already done, 1 failed" in log
    records = _records(resumed)
    in_order = [r["name"] for r in _records(runs["root"] / "single")]
    assert [r["name"] for r in records] == in_order  # leftover journal merged, in input order
    for name, before in runs["untouched"].items():
        assert (resumed / f"{name}.map.npy").stat().st_mtime_ns == before, f"{name} was redone"
    for name in REDONE:
        np.testing.assert_allclose(
            np.load(resumed / f"{name}.map.npy"),
            np.load(runs["root"] / "single" / f"{name}.map.npy"),
            atol=1e-5,
        )
    errors = [json.loads(line) for line in (resumed / "errors.jsonl").read_text().splitlines()]
    assert [Path(e["path"]).name for e in errors] == ["bad.png"] and errors[0]["error"]
    assert not _leftovers(resumed)


def test_the_single_process_path_merges_journals_an_interrupted_run_left(tmp_path) -> None:
    """Shared resume logic: journaled records count as done in one process too, then merge."""
    explainer = lcam.save_explainer(
        lcam.build_explainer(
            lcam.FrozenBackbone("lcam.models.TinyResNet", num_classes=4, input_size=32)
        ),
        tmp_path / "explainer.pt",
    )
    names = _write_images(tmp_path / "in")
    args = _common(explainer, tmp_path / "in", tmp_path / "out")
    assert infer_main(args) == 0
    out = tmp_path / "out"
    lines = (out / "predictions.jsonl").read_text().splitlines(keepends=True)
    (out / "predictions.jsonl").write_text("".join(lines[:4]))
    (out / "predictions.rank0.jsonl").write_text("".join(lines[4:7]))
    (out / "predictions.rank3.jsonl").write_text("".join(lines[7:]) + '{"name": "cut')
    (out / "errors.rank1.jsonl").write_text('{"path": "gone.png", "error": "old"}\n')
    before = {name: (out / f"{name}.map.npy").stat().st_mtime_ns for name in names}
    assert infer_main(args) == 0
    assert sorted(r["name"] for r in _records(out)) == sorted(names)
    assert _records(out) == [json.loads(line) for line in lines]  # in input order
    assert {name: (out / f"{name}.map.npy").stat().st_mtime_ns for name in names} == before
    assert not _leftovers(out)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--devices", "2", "--device", "cpu"], "use --accelerator"),
        (["--devices", "0"], "at least 1"),
        # Called in-process, Lightning could only re-launch pytest's command line for rank 1.
        (["--devices", "2", "--accelerator", "cpu", "--strategy", "ddp"], "run infer.py as a"),
    ],
)
def test_multi_process_usage_errors_exit_2(tmp_path, capsys, extra, message) -> None:
    explainer = lcam.save_explainer(
        lcam.build_explainer(
            lcam.FrozenBackbone("lcam.models.TinyResNet", num_classes=4, input_size=32)
        ),
        tmp_path / "explainer.pt",
    )
    _write_images(tmp_path / "in")
    code = infer_main([*_common(explainer, tmp_path / "in", tmp_path / "out"), *extra])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
