"""infer.py over hostile folders: every readable image explained, every bad file reported.

One folder holds good images in every PIL mode the reader must convert, an EXIF-rotated JPEG, and
files that must fail (corrupt, truncated, not an image, empty, decompression bombs, a dangling
symlink). The run, a re-run and an ``--overwrite`` run are made once per module; the tests check
their outputs (an infer.py process killed mid-run: ``test_killed_run.py``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lcam
from lcam.inference import main as infer_main
from lcam.viz import overlay, to_uint8

ROOT = Path(__file__).resolve().parents[2]

# Every image bigger than this many pixels is a (possible) decompression bomb for the whole module.
MAX_PIXELS = 2000
OLD_NS = 1_000_000_000 * 1_000_000_000  # a fixed mtime (2001-09-09) set on outputs before re-runs


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    backbone = lcam.FrozenBackbone(
        "lcam.models.TinyResNet", num_classes=4, input_size=32, class_names=["a", "b", "c", "d"]
    )
    explainer = lcam.build_explainer(backbone)
    torch.manual_seed(0)
    torch.nn.init.normal_(explainer.head.conv.weight)
    return lcam.save_explainer(explainer, tmp_path_factory.mktemp("ckpt") / "explainer.pt")


def _blocks(height: int, width: int, seed: int) -> np.ndarray:
    """A blocky RGB picture (8-pixel blocks) that survives JPEG compression nearly unchanged."""
    rng = np.random.default_rng(seed)
    small = rng.integers(20, 236, (-(-height // 8), -(-width // 8), 3), dtype=np.uint8)
    return small.repeat(8, axis=0).repeat(8, axis=1)[:height, :width]


def _encoded(image: Image.Image, format_: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format_)
    return buffer.getvalue()


def _write_good(folder: Path) -> dict[str, tuple[np.ndarray, float]]:
    """Write the good images; return, per output name, the displayed RGB picture (H, W, 3) that
    the overlay must show, and the tolerated mean absolute overlay error (JPEG is lossy)."""
    rng = np.random.default_rng(1)
    expected: dict[str, tuple[np.ndarray, float]] = {}

    rgb = _blocks(30, 40, seed=2)
    Image.fromarray(rgb).save(folder / "rgb_jpeg.jpg", quality=95, subsampling=0)
    expected["rgb_jpeg.jpg"] = (rgb, 3.0)

    noise = rng.integers(0, 256, (25, 35, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "rgb_png.png")
    expected["rgb_png.png"] = (noise, 0.0)

    gray = rng.integers(0, 256, (30, 20), dtype=np.uint8)
    Image.fromarray(gray, "L").save(folder / "gray.png")
    expected["gray.png"] = (np.repeat(gray[..., None], 3, axis=2), 0.0)

    # Transparent pixels hide a bright colour; composited on black they must show black.
    rgba = np.zeros((24, 32, 4), dtype=np.uint8)
    rgba[..., :3] = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    rgba[:, :16, 3] = 255
    rgba[:, 16:, :3] = [250, 250, 0]
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    shown = rgba[..., :3].copy()
    shown[:, 16:] = 0
    expected["rgba.png"] = (shown, 0.0)

    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    indices = rng.integers(0, 16, (20, 30), dtype=np.uint8)
    paletted = Image.fromarray(indices, "P")
    paletted.putpalette(palette.flatten().tolist())
    paletted.save(folder / "palette.png")
    expected["palette.png"] = (palette[indices], 0.0)

    cmyk = _blocks(32, 24, seed=3)
    Image.fromarray(cmyk).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    expected["cmyk.jpg"] = (cmyk, 3.0)

    # 16 bits over the full range: a plain convert("RGB") would clip nearly all of it to white.
    deep = np.linspace(0, 65535, 30 * 40).reshape(30, 40).astype(np.uint16)
    sixteen = Image.fromarray(deep)
    assert sixteen.mode == "I;16"
    sixteen.save(folder / "gray16.png")
    eight = np.round(deep / 65535 * 255).astype(np.uint8)
    expected["gray16.png"] = (np.repeat(eight[..., None], 3, axis=2), 0.5)

    # 16 bits over part of the range (0..30000): scaled by the format's 65535, not stretched to
    # the image's own maximum (which would make 30000 white).
    dim = np.linspace(0, 30000, 30 * 40).reshape(30, 40).astype(np.uint16)
    Image.fromarray(dim).save(folder / "gray16_dim.png")
    dim_eight = np.round(dim / 65535 * 255).astype(np.uint8)
    assert dim_eight.max() == 117
    expected["gray16_dim.png"] = (np.repeat(dim_eight[..., None], 3, axis=2), 0.5)

    # Displayed picture 20 wide x 40 high: red | green on top, blue below. Stored rotated 90
    # degrees anticlockwise (40 wide x 20 high) with EXIF orientation 6 ("rotate 90 clockwise").
    shown_exif = np.zeros((40, 20, 3), dtype=np.uint8)
    shown_exif[:20, :10] = [220, 40, 40]
    shown_exif[:20, 10:] = [40, 200, 40]
    shown_exif[20:] = [40, 40, 220]
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(shown_exif, 1)))
    assert stored.size == (40, 20)
    stored.save(folder / "exif_rotated.jpg", exif=exif, quality=95, subsampling=0)
    expected["exif_rotated.jpg"] = (shown_exif, 3.0)
    return expected


def _write_bad(folder: Path, outside: Path) -> list[str]:
    """Write the files that must fail; return their file names."""
    rng = np.random.default_rng(5)
    noise = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    (folder / "corrupt.jpg").write_bytes(
        b"\xff\xd8\xff\xe0" + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
    )
    jpeg, png = _encoded(noise, "JPEG"), _encoded(noise, "PNG")
    (folder / "truncated_jpeg.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "truncated_png.png").write_bytes(png[: len(png) // 2])
    (folder / "notes.png").write_text("meeting notes, not a picture\n")
    (folder / "zero.jpg").write_bytes(b"")
    # 100 x 100 = 10000 pixels > 2 * MAX_PIXELS: PIL raises DecompressionBombError on open.
    Image.new("RGB", (100, 100), "white").save(folder / "bomb.png")
    # 50 x 50 = 2500 pixels, between MAX_PIXELS and twice it: PIL only warns; must be refused.
    Image.new("RGB", (50, 50), "white").save(folder / "bomb_mild.png")
    # Tests run as root, for whom chmod 000 files stay readable: an image name that cannot be
    # opened is made as a symlink to a file that does not exist.
    (folder / "unreadable.jpg").symlink_to(outside / "deleted.jpg")
    return [
        "corrupt.jpg",
        "truncated_jpeg.jpg",
        "truncated_png.png",
        "notes.png",
        "zero.jpg",
        "bomb.png",
        "bomb_mild.png",
        "unreadable.jpg",
    ]


def _snapshot(out: Path, names) -> dict[str, tuple[np.ndarray, str, np.ndarray]]:
    files = {}
    for name in names:
        saliency, picture = out / f"{name}.map.npy", out / f"{name}.overlay.png"
        if saliency.is_file() and picture.is_file():
            with Image.open(picture) as image:
                files[name] = (np.load(saliency), image.mode, np.asarray(image))
    return files


def _mtimes(out: Path, names) -> dict[str, int]:
    return {
        f"{name}{suffix}": (out / f"{name}{suffix}").stat().st_mtime_ns
        for name in names
        for suffix in (".map.npy", ".overlay.png")
        if (out / f"{name}{suffix}").exists()
    }


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _run(args: list[str]) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = infer_main(args)
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, checkpoint):
    """First run, re-run (outputs' mtimes set to OLD_NS first) and --overwrite run."""
    base = tmp_path_factory.mktemp("bad_inputs")
    folder, out = base / "in", base / "out"
    folder.mkdir()
    expected = _write_good(folder)
    bad = _write_bad(folder, base)
    args = [
        "--checkpoint",
        str(checkpoint),
        "--input",
        str(folder),
        "--output",
        str(out),
        "--batch-size",
        "3",
        "--num-workers",
        "0",
        "--no-progress",
    ]
    result = {"folder": folder, "out": out, "expected": expected, "bad": bad}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Image, "MAX_IMAGE_PIXELS", MAX_PIXELS)
        result["first"] = _run(args)
        result["first_files"] = sorted(p.name for p in out.iterdir())
        result["first_partials"] = [str(p) for p in out.rglob("*.partial")]
        result["first_errors"] = _jsonl(out / "errors.jsonl")
        result["first_predictions"] = _jsonl(out / "predictions.jsonl")
        result["first_outputs"] = _snapshot(out, expected)
        for path in out.iterdir():
            if path.suffix in (".npy", ".png"):
                os.utime(path, ns=(OLD_NS, OLD_NS))

        result["rerun"] = _run(args)
        result["rerun_mtimes"] = _mtimes(out, expected)
        result["rerun_errors"] = _jsonl(out / "errors.jsonl")
        result["rerun_predictions"] = _jsonl(out / "predictions.jsonl")

        result["overwrite"] = _run([*args, "--overwrite"])
        result["overwrite_mtimes"] = _mtimes(out, expected)
        result["overwrite_errors"] = _jsonl(out / "errors.jsonl")
        result["overwrite_predictions"] = _jsonl(out / "predictions.jsonl")
        result["overwrite_outputs"] = _snapshot(out, expected)
        result["final_partials"] = [str(p) for p in out.rglob("*.partial")]
    return result


# Output names: file names, extension kept.
GOOD = [
    "rgb_jpeg.jpg",
    "rgb_png.png",
    "gray.png",
    "rgba.png",
    "palette.png",
    "cmyk.jpg",
    "gray16.png",
    "gray16_dim.png",
    "exif_rotated.jpg",
]


def test_exit_code_is_1_when_some_inputs_fail(runs) -> None:
    for run in ("first", "rerun", "overwrite"):
        code, stdout, stderr = runs[run]
        assert code == 1, f"{run}: exit code {code}; stdout {stdout!r} stderr {stderr!r}"


@pytest.mark.parametrize("name", GOOD)
def test_good_image_gets_a_valid_map_at_its_displayed_size(runs, name) -> None:
    picture, _ = runs["expected"][name]
    assert name in runs["first_outputs"], (
        f"{name}: no .npy/.png written; errors: {runs['first_errors']}"
    )
    saliency, mode, overlay_array = runs["first_outputs"][name]
    assert saliency.dtype == np.float32
    assert saliency.shape == picture.shape[:2]  # (H, W) of the displayed (EXIF-applied) image
    assert np.isfinite(saliency).all() and saliency.min() >= 0 and saliency.max() <= 1
    assert saliency.max() > saliency.min()
    assert mode == "RGB" and overlay_array.shape == (*picture.shape[:2], 3)


@pytest.mark.parametrize("name", GOOD)
def test_overlay_shows_the_displayed_picture(runs, name) -> None:
    """The overlay is 0.5 * picture + 0.5 * colour map: rebuilt from the expected picture and the
    saved map, it matches, so grayscale, palette, CMYK, 16-bit, alpha and EXIF were converted
    as a viewer shows them (RGBA composited on black, as read_rgb documents)."""
    picture, tolerance = runs["expected"][name]
    assert name in runs["first_outputs"], f"{name}: no outputs"
    saliency, _, overlay_array = runs["first_outputs"][name]
    assert overlay_array.shape[:2] == picture.shape[:2]

    def error(shown: np.ndarray) -> float:
        image = torch.from_numpy(shown.copy()).permute(2, 0, 1).float()[None] / 255
        rebuilt = to_uint8(overlay(image, torch.from_numpy(saliency)[None]))[0].numpy()
        return float(np.abs(rebuilt.astype(float) - overlay_array.astype(float)).mean())

    assert error(picture) <= tolerance + 0.5, f"{name}: overlay differs from the expected picture"
    if name == "exif_rotated":  # the other rotations and the mirror image do not fit
        for wrong in (picture[::-1, ::-1], picture[:, ::-1]):
            assert error(wrong) > 20


def test_every_bad_file_is_reported_once_with_a_one_line_reason(runs) -> None:
    folder = runs["folder"]
    errors = runs["first_errors"]
    paths = [entry["path"] for entry in errors]
    assert sorted(paths) == sorted(str(folder / name) for name in runs["bad"]), errors
    for entry in errors:
        reason = entry["error"]
        assert isinstance(reason, str) and reason.strip(), entry
        assert "\n" not in reason and "\r" not in reason, entry


@pytest.mark.parametrize("name", ["bomb.png", "bomb_mild.png"])
def test_decompression_bombs_are_refused_as_such(runs, name) -> None:
    reasons = {Path(e["path"]).name: e["error"] for e in runs["first_errors"]}
    assert name in reasons
    assert "decompression bomb" in reasons[name].lower(), reasons[name]


def test_predictions_list_each_good_image_once(runs) -> None:
    for run in ("first", "rerun", "overwrite"):
        records = runs[f"{run}_predictions"]
        assert sorted(r["name"] for r in records) == sorted(GOOD), run
        assert all(r["map"] == f"{r['name']}.map.npy" for r in records)
        assert all(r["overlay"] == f"{r['name']}.overlay.png" for r in records)


def test_only_final_files_remain(runs) -> None:
    assert runs["first_partials"] == [] and runs["final_partials"] == []
    expected = {f"{name}{suffix}" for name in GOOD for suffix in (".map.npy", ".overlay.png")}
    assert set(runs["first_files"]) == expected | {"predictions.jsonl", "errors.jsonl"}


def test_rerun_skips_complete_outputs_and_still_reports_the_bad_ones(runs) -> None:
    assert len(runs["rerun_mtimes"]) == 2 * len(GOOD)
    changed = {name for name, mtime in runs["rerun_mtimes"].items() if mtime != OLD_NS}
    assert not changed, f"re-run rewrote complete outputs: {sorted(changed)}"
    # The same bad files as the first run (whether that run found them all is tested above).
    assert runs["first_errors"]
    assert sorted(e["path"] for e in runs["rerun_errors"]) == sorted(
        e["path"] for e in runs["first_errors"]
    )


def test_overwrite_redoes_everything_with_the_same_results(runs) -> None:
    assert len(runs["overwrite_mtimes"]) == 2 * len(GOOD)
    unchanged = {name for name, mtime in runs["overwrite_mtimes"].items() if mtime == OLD_NS}
    assert not unchanged, f"--overwrite kept: {sorted(unchanged)}"
    assert runs["first_errors"]
    assert sorted(e["path"] for e in runs["overwrite_errors"]) == sorted(
        e["path"] for e in runs["first_errors"]
    )
    for name, (saliency, _, overlay_array) in runs["first_outputs"].items():
        again, _, overlay_again = runs["overwrite_outputs"][name]
        np.testing.assert_array_equal(again, saliency)
        np.testing.assert_array_equal(overlay_again, overlay_array)


@pytest.mark.parametrize("content", [[], ["readme.txt", "labels.csv"]], ids=["empty", "no-images"])
def test_folder_without_images_is_a_usage_error(tmp_path, checkpoint, content) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in content:
        (folder / name).write_text("x")
    code, _, stderr = _run(
        ["--checkpoint", str(checkpoint), "--input", str(folder), "--output", str(tmp_path / "o")]
    )
    assert code == 2
    message = stderr.strip()
    assert len(message.splitlines()) == 1, stderr
    assert "no images" in message and str(folder) in message, stderr
    assert not (tmp_path / "o").exists()
