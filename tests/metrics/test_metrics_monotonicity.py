"""Monotonicity against a direct per-step reference and against Quantus 0.6.0 given a perturbation
that restores the image's pixels (its own writes the baseline again: the curve never moves, kept
documented below), and a map of the evidence against bad and trivial maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import quantus
import torch
from metric_cases import RegionContrast, quadrant_map, region_images, tiny_network, trivial_maps
from torch import nn

from lcam.metrics import Monotonicity


def reference_curve(model: nn.Module, image: torch.Tensor, a_map: torch.Tensor, steps: int):  # noqa: ANN201
    """Restore pixels one group at a time in increasing map order (stable), loop by loop."""
    order = np.argsort(a_map.flatten().numpy(), kind="stable")
    per_step = math.ceil(order.size / steps)
    current = torch.zeros_like(image)
    curve = []
    target = int(model(image[None]).argmax())
    for step in range(steps):
        for pixel in order[step * per_step : (step + 1) * per_step]:
            row, col = divmod(int(pixel), image.shape[-1])
            current[:, row, col] = image[:, row, col]
        curve.append(float(model(current[None])[0, target]))
    return curve


def test_matches_a_direct_reference() -> None:
    model, images, maps = tiny_network()
    metric = Monotonicity(model, steps=10, batch_size=7)
    with torch.no_grad():
        curves = metric.curves(images, maps)
        expected = [reference_curve(model, x, m, 10) for x, m in zip(images, maps, strict=True)]
    torch.testing.assert_close(
        curves, torch.tensor(expected, dtype=torch.float64), atol=1e-5, rtol=1e-5
    )
    metric.update(images, maps)
    rising = np.diff(np.array(expected), axis=1) >= 0
    values = metric.compute()
    assert abs(values["monotonicity"].item() - rising.mean()) < 1e-6
    assert values["monotonic"].item() == rising.all(axis=1).mean()


def test_map_of_the_evidence_beats_bad_and_trivial_maps() -> None:
    model, images = RegionContrast(), region_images()
    targets = torch.zeros(4, dtype=torch.long)
    scores = {}
    named = {"good": quadrant_map(4, "tl", "br"), "bad": quadrant_map(4, "br", "tl")}
    for name, maps in {**named, **trivial_maps(4)}.items():
        metric = Monotonicity(model, steps=64)  # 4 pixels a step: no step mixes quadrants
        metric.update(images, maps, targets)
        scores[name] = metric.compute()["monotonic"].item()
    assert scores["good"] == 1.0, scores
    assert all(scores[other] == 0.0 for other in scores if other != "good"), scores


def test_quantus_monotonicity_never_restores_a_pixel() -> None:
    """Why this metric is not compared with Quantus 0.6.0: every input its Monotonicity feeds
    the model is the black baseline, so every map (even the bad one) scores True."""
    seen: list[torch.Tensor] = []

    class Recorder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.clone())
            return RegionContrast()(x)

    images = region_images()
    result = quantus.Monotonicity(features_in_step=64, disable_warnings=True)(
        model=Recorder().eval(), x_batch=images.numpy(), y_batch=np.zeros(4, dtype=int),
        a_batch=quadrant_map(4, "br", "tl")[:, None].numpy(), device="cpu",
    )  # fmt: skip
    assert result == [True] * 4 and seen and all(bool((x == 0).all()) for x in seen)


def restore_by_indices(arr: np.ndarray, indices: np.ndarray, source: np.ndarray, **_: object):  # noqa: ANN201
    """Quantus ``perturb_func``: put the original values ``source`` (N x F) back at ``indices``
    (N x I), where Quantus 0.6.0's default writes the baseline value there again."""
    restored = arr.copy()
    rows = np.arange(len(arr))[:, None]
    restored[rows, indices] = source[rows, indices]
    return restored


def test_matches_quantus_when_its_perturbation_restores_pixels() -> None:
    """Quantus's Monotonicity with ``perturb_func=restore_by_indices`` (a public argument, no
    patch) feeds the model the same restored images: its per-step logits equal lcam's curves to
    1e-5 and its per-image verdicts equal lcam's ``monotonic``. Quantus ranks the 3 HW channel
    pixels of the map broadcast over the colours; a pixel's 3 copies tie and sort together, so
    ``features_in_step = 3 * ceil(HW / steps)`` restores the same whole pixels per step (Quantus
    wants it to divide HW: 24 x 24 images, 12 steps of 48 pixels)."""
    model, _, _ = tiny_network()
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(3, 3, 24, 24, generator=generator)
    maps = torch.rand(3, 24, 24, generator=generator)  # random: no tie between pixels
    steps = 12
    with torch.no_grad():
        targets = model(images).argmax(dim=1)
    seen: list[torch.Tensor] = []

    class Recorder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = model(x)
            seen.append(logits.gather(1, targets[:, None])[:, 0].double())
            return logits

    per_step = math.ceil(images.shape[-1] * images.shape[-2] / steps)
    verdicts = quantus.Monotonicity(
        features_in_step=3 * per_step, perturb_baseline=0.0, perturb_func=restore_by_indices,
        perturb_func_kwargs={"source": images.flatten(1).numpy()}, disable_warnings=True,
    )(
        model=Recorder().eval(), x_batch=images.numpy(), y_batch=targets.numpy(),
        a_batch=maps[:, None].numpy(), device="cpu",
    )  # fmt: skip
    quantus_curves = torch.stack(seen, dim=1)  # (B, steps)
    metric = Monotonicity(model, steps=steps)
    with torch.no_grad():
        curves = metric.curves(images, maps, targets)
    assert quantus_curves.shape == curves.shape == (3, steps)
    assert float(curves.diff(dim=1).abs().min()) > 1e-4  # every step moves the logit
    torch.testing.assert_close(curves, quantus_curves, atol=1e-5, rtol=1e-5)
    metric.update(images, maps, targets)
    rising = (curves.diff(dim=1) >= 0).all(dim=1)
    assert verdicts == rising.tolist()
    assert metric.compute()["monotonic"].item() == pytest.approx(float(np.mean(verdicts)))
