"""ImageFolder data decodes files as ``infer.py`` does and skips unreadable ones, naming them."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from lcam.data import ImageFolderDataModule
from lcam.data.datamodules import collate_readable
from lcam.images import read_rgb

SIDE = 16


def _folder(tmp_path, split: str) -> ImageFolderDataModule:
    return ImageFolderDataModule(
        str(tmp_path / split),
        str(tmp_path / split),
        image_size=SIDE,
        resize_size=SIDE,
        batch_size=8,
        num_workers=0,
    )


def test_a_16_bit_png_trains_on_the_picture_infer_py_explains(tmp_path) -> None:
    """PIL's own convert("RGB") clips 16-bit values at 255 (a white picture); the data module
    must give the picture ``infer.py`` reads, scaled by the format's range."""
    (tmp_path / "val" / "scan").mkdir(parents=True)
    ramp = np.linspace(0, 65535, SIDE * SIDE).reshape(SIDE, SIDE).astype(np.uint16)
    path = tmp_path / "val" / "scan" / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I;16")
    batch = next(iter(_folder(tmp_path, "val").val_dataloader()))
    expected = read_rgb(path).float() / 255  # (3, S, S); the transforms keep an S x S image
    torch.testing.assert_close(batch["image"][0], expected, rtol=0, atol=1e-6)
    assert 0.45 < batch["image"].mean() < 0.55  # a ramp, not a white picture


def test_unreadable_files_are_skipped_and_named(tmp_path) -> None:
    folder = tmp_path / "train" / "cat"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(3):
        pixels = rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image, not an image extension")
    data = _folder(tmp_path, "train")
    for loader in (data.train_dataloader(), data.val_dataloader()):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            batches = list(loader)
        assert sum(len(batch["label"]) for batch in batches) == 3
        skipped = sorted(str(w.message) for w in caught if "skipping an image" in str(w.message))
        assert len(skipped) == 2
        assert "broken.jpg" in skipped[0] and "empty.png" in skipped[1]


def test_a_batch_with_no_readable_image_is_a_loud_error() -> None:
    items = [{"unreadable": "'a.jpg' is not a readable image: truncated"}] * 2
    with pytest.warns(UserWarning, match="a.jpg"), pytest.raises(RuntimeError, match="a.jpg"):
        collate_readable(items)
