"""infer.py never writes over an input or a file that is not its own, and keeps inputs apart.

Outputs are ``<name>.map.npy`` and ``<name>.overlay.png``, ``<name>`` being the input's path
relative to its folder with the extension kept; ``--output`` may be the input folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lcam
from lcam.explanation import Explanation
from lcam.inference import collect_images, main, run_inference


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    backbone = lcam.FrozenBackbone("lcam.models.TinyResNet", num_classes=4, input_size=32)
    explainer = lcam.build_explainer(backbone)
    torch.nn.init.normal_(explainer.head.conv.weight)
    return lcam.save_explainer(explainer, tmp_path_factory.mktemp("ckpt") / "explainer.pt")


def _image(path: Path, seed: int, size: tuple[int, int] = (20, 28)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _sha256(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _infer(checkpoint: Path, inputs: list[Path], output: Path, *extra: str) -> int:
    return main(
        [
            "--checkpoint",
            str(checkpoint),
            "--input",
            *map(str, inputs),
            "--output",
            str(output),
            "--num-workers",
            "0",
            "--batch-size",
            "2",
            "--no-progress",
            *extra,
        ]
    )


def _records(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]


def test_output_folder_equal_to_the_input_folder_leaves_every_input_unchanged(
    tmp_path, checkpoint
) -> None:
    folder = tmp_path / "photos"
    for index, name in enumerate(["photo.png", "b.jpg", "nested/c.png"]):
        _image(folder / name, index)
    inputs = _sha256(folder)
    assert _infer(checkpoint, [folder], folder) == 0
    after = _sha256(folder)
    assert {name: after[name] for name in inputs} == inputs
    records = _records(folder)
    assert sorted(r["name"] for r in records) == sorted(inputs)
    for record in records:
        assert record["map"] == f"{record['name']}.map.npy"
        assert record["overlay"] == f"{record['name']}.overlay.png"
        assert (folder / record["map"]).is_file() and (folder / record["overlay"]).is_file()
    # A re-run finds its own overlays (PNG files) in the folder: they are not inputs.
    assert _infer(checkpoint, [folder], folder) == 0
    assert _sha256(folder) == after
    assert sorted(r["name"] for r in _records(folder)) == sorted(inputs)
    # --overwrite redoes the images, rewriting only the job's own files.
    assert _infer(checkpoint, [folder], folder, "--overwrite") == 0
    assert {name: _sha256(folder)[name] for name in inputs} == inputs
    assert not list(folder.glob(".claims*")) and not list(folder.rglob("*.partial"))


def test_same_stem_inputs_in_one_folder_are_both_explained(tmp_path, checkpoint, capsys) -> None:
    folder = tmp_path / "exports"
    _image(folder / "good_rgb.jpg", 0)
    _image(folder / "good_rgb.png", 1, size=(24, 16))
    assert _infer(checkpoint, [folder], tmp_path / "out") == 0
    assert "pass their folders" not in capsys.readouterr().err
    records = {r["name"]: r for r in _records(tmp_path / "out")}
    assert sorted(records) == ["good_rgb.jpg", "good_rgb.png"]
    shapes = {name: np.load(tmp_path / "out" / r["map"]).shape for name, r in records.items()}
    assert shapes == {"good_rgb.jpg": (20, 28), "good_rgb.png": (24, 16)}


def test_same_relative_path_in_two_folders_gets_names_from_their_common_folder(
    tmp_path, checkpoint
) -> None:
    _image(tmp_path / "a" / "cat.png", 0)
    _image(tmp_path / "b" / "cat.png", 1)
    files = collect_images([tmp_path / "a", tmp_path / "b"])
    assert [item.name for item in files] == ["a/cat.png", "b/cat.png"]
    # One file reached twice (directly and through its folder) is one input.
    assert len(collect_images([tmp_path / "a", tmp_path / "a" / "cat.png"])) == 1
    assert _infer(checkpoint, [tmp_path / "a", tmp_path / "b"], tmp_path / "out") == 0
    assert (tmp_path / "out" / "a" / "cat.png.map.npy").is_file()
    assert (tmp_path / "out" / "b" / "cat.png.map.npy").is_file()


def test_an_input_named_like_an_output_is_never_written_over(tmp_path, checkpoint) -> None:
    folder = tmp_path / "photos"
    _image(folder / "x.png", 0)
    _image(folder / "x.png.overlay.png", 1)  # the user's own picture, not infer.py's
    inputs = _sha256(folder)
    assert _infer(checkpoint, [folder], folder) == 1  # x.png refused, the other explained
    assert {name: _sha256(folder)[name] for name in inputs} == inputs
    errors = [json.loads(line) for line in (folder / "errors.jsonl").read_text().splitlines()]
    assert [Path(e["path"]).name for e in errors] == ["x.png"]
    assert "would overwrite an input" in errors[0]["error"]
    assert [r["name"] for r in _records(folder)] == ["x.png.overlay.png"]
    assert not (folder / "x.png.map.npy").exists()  # nothing of a refused image is written


def test_a_foreign_file_at_an_output_path_is_never_written_over(tmp_path, checkpoint) -> None:
    _image(tmp_path / "in" / "x.png", 0)
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.png.overlay.png").write_bytes(b"someone else's file")
    assert _infer(checkpoint, [tmp_path / "in"], out) == 1
    assert (out / "x.png.overlay.png").read_bytes() == b"someone else's file"
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert "was not written by an earlier run" in errors[0]["error"]
    assert not (out / "x.png.map.npy").exists()


def test_files_claimed_by_an_interrupted_run_are_redone(tmp_path, checkpoint) -> None:
    """A run killed after renaming a file into place but before journaling its record left a
    claim (written before the files): the next run may write over that file."""
    _image(tmp_path / "in" / "x.png", 0)
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.png.map.npy").write_bytes(b"left by a killed run")
    (out / ".claims.jsonl").write_text(json.dumps({"files": ["x.png.map.npy"]}) + "\n")
    assert _infer(checkpoint, [tmp_path / "in"], out) == 0
    assert np.load(out / "x.png.map.npy").shape == (20, 28)
    assert not (out / ".claims.jsonl").exists()  # every claimed file is now recorded


def test_records_say_which_maps_are_degenerate(tmp_path, checkpoint) -> None:
    for index in range(3):
        _image(tmp_path / "in" / f"{index}.png", index)
    explainer = lcam.load_explainer(checkpoint, device="cpu")
    explain = explainer.explain

    def flagging(images, targets=None):  # the first image of each batch flagged degenerate
        explanation = explain(images, targets)
        flags = torch.zeros(len(images), dtype=torch.bool)
        flags[0] = True
        return Explanation(**{**vars(explanation), "degenerate": flags})

    explainer.explain = flagging
    files = collect_images([tmp_path / "in"])
    counts = run_inference(
        explainer, files, tmp_path / "out", batch_size=2, num_workers=0, progress=False
    )
    assert counts == {"done": 3, "skipped": 0, "failed": 0}
    flags = {r["name"]: r["degenerate"] for r in _records(tmp_path / "out")}
    assert flags == {"0.png": True, "1.png": False, "2.png": True}
