"""Deep images are scaled by their format's range, never by their own maximum, and never wrap."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from lcam.inference import ImageFile, ImageFiles, read_rgb


def _gray(rgb: torch.Tensor) -> np.ndarray:
    assert rgb.dtype == torch.uint8 and rgb.shape[0] == 3
    assert torch.equal(rgb[0], rgb[1]) and torch.equal(rgb[1], rgb[2])
    return rgb[0].numpy()


def test_a_dim_16_bit_png_stays_dim(tmp_path) -> None:
    # 0..30000 of 65535. By hand: v * 255 / 65535 = 0, 1.0, 50.0, 116.73 -> 0, 1, 50, 117.
    # Stretching by the image's own maximum (30000) would give 0, 2, 109, 255.
    values = np.array([[0, 257], [12850, 30000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "dim.png")
    with Image.open(tmp_path / "dim.png") as image:
        assert image.mode == "I;16"
    expected = np.array([[0, 1], [50, 117]], dtype=np.uint8)
    np.testing.assert_array_equal(_gray(read_rgb(tmp_path / "dim.png")), expected)
    item = ImageFiles([ImageFile(tmp_path / "dim.png", "dim.png")], image_size=2)[0]
    torch.testing.assert_close(item["image"][0], torch.from_numpy(expected).float() / 255)


def test_big_endian_16_bit_is_scaled_the_same(tmp_path) -> None:
    values = np.array([[0, 257], [12850, 30000]], dtype=">u2")
    image = Image.fromarray(values)
    assert image.mode == "I;16B"
    image.save(tmp_path / "big.tif")
    np.testing.assert_array_equal(
        _gray(read_rgb(tmp_path / "big.tif")), np.array([[0, 1], [50, 117]], dtype=np.uint8)
    )


def test_32_bit_integers_are_clamped_to_the_16_bit_range_never_wrapped(tmp_path) -> None:
    # Mode I is read as 16-bit data: -70000 -> 0 (a cast would wrap it), 70000 -> 255,
    # 32768 -> 127.50 -> 128.
    values = np.array([[-70000, 0], [70000, 32768]], dtype=np.int32)
    Image.fromarray(values, "I").save(tmp_path / "wide.tif")
    with Image.open(tmp_path / "wide.tif") as image:
        assert image.mode == "I"
    np.testing.assert_array_equal(
        _gray(read_rgb(tmp_path / "wide.tif")), np.array([[0, 0], [255, 128]], dtype=np.uint8)
    )


def test_32_bit_floats_are_read_as_intensities_in_0_1(tmp_path) -> None:
    # By hand: clamp to [0, 1], times 255: 0, 63.75 -> 64, 127.5 -> 128 (half to even), 255.
    values = np.array([[-0.5, 0.25], [0.5, 2.0]], dtype=np.float32)
    Image.fromarray(values, "F").save(tmp_path / "float.tif")
    with Image.open(tmp_path / "float.tif") as image:
        assert image.mode == "F"
    np.testing.assert_array_equal(
        _gray(read_rgb(tmp_path / "float.tif")), np.array([[0, 64], [128, 255]], dtype=np.uint8)
    )
