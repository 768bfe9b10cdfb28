"""Overlay colour maps: viridis is perceptually uniform, jet is kept, infer.py takes --colormap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import lcam
from lcam.inference import main as infer_main
from lcam.viz import COLORMAPS, apply_colormap, overlay, to_uint8


def lightness(rgb: torch.Tensor) -> torch.Tensor:
    """CIE L* (0-100) of ``(..., 3)`` sRGB colours in [0, 1]."""
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    y = linear @ torch.tensor([0.2126, 0.7152, 0.0722], dtype=rgb.dtype)
    return torch.where(y > 0.008856, 116 * y ** (1 / 3) - 16, 903.3 * y)


def lightness_steps(colormap: str) -> torch.Tensor:
    ramp = torch.linspace(0, 1, 257, dtype=torch.float64)[None, None]  # (1, 1, 257)
    colours = apply_colormap(ramp, colormap)[0, :, 0].T  # (257, 3)
    return lightness(colours).diff()


def test_viridis_lightness_rises_evenly_and_jet_does_not() -> None:
    viridis, jet = lightness_steps("viridis"), lightness_steps("jet")
    # Perceptually uniform: lightness rises at every step, and no step is 2x another.
    assert bool((viridis > 0).all())
    assert float(viridis.max() / viridis.min()) < 2.0, (viridis.min(), viridis.max())
    # The old map is not: its lightness falls over part of the range (the bright bands).
    assert bool((jet < 0).any())
    assert float(lightness_steps("viridis").sum()) > 60  # dark low end, bright high end


def test_viridis_matches_matplotlib() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    ramp = torch.linspace(0, 1, 256, dtype=torch.float64)
    reference = torch.tensor(matplotlib.colormaps["viridis"](ramp.numpy())[:, :3])
    ours = apply_colormap(ramp[None, None], "viridis")[0, :, 0].T
    # 17 linear pieces: within 6 of 255 levels of matplotlib's 256-entry table.
    assert float((ours - reference).abs().max()) < 0.025


def test_unknown_colormap_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="viridis, jet"):
        apply_colormap(torch.zeros(1, 2, 2), "rainbow")  # type: ignore[arg-type]
    assert set(COLORMAPS) == {"viridis", "jet"}


@pytest.mark.parametrize("colormap", ["viridis", "jet"])
def test_infer_writes_overlays_in_the_chosen_colormap(tmp_path, colormap) -> None:
    backbone = lcam.FrozenBackbone("lcam.models.TinyResNet", num_classes=3, input_size=32)
    checkpoint = lcam.save_explainer(lcam.build_explainer(backbone), tmp_path / "head.pt")
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    argv = ["--checkpoint", str(checkpoint), "--input", str(tmp_path / "a.png")]
    argv += ["--output", str(tmp_path / "out"), "--no-progress", "--num-workers", "0"]
    assert infer_main([*argv, "--colormap", colormap]) == 0
    saliency = torch.from_numpy(np.load(tmp_path / "out" / "a.png.map.npy"))[None]
    image = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    written = np.asarray(Image.open(tmp_path / "out" / "a.png.overlay.png"))
    expected = to_uint8(overlay(image, saliency, colormap=colormap))[0].numpy()
    other = to_uint8(
        overlay(image, saliency, colormap="jet" if colormap == "viridis" else "viridis")
    )
    assert np.abs(written.astype(int) - expected).max() <= 1
    assert np.abs(written.astype(int) - other[0].numpy()).max() > 10
