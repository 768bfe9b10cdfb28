"""Max-sensitivity on explainers whose sensitivity is known."""

from __future__ import annotations

import pytest
import torch

from lcam.metrics import MaxSensitivity


def test_constant_explainer_has_zero_sensitivity() -> None:
    metric = MaxSensitivity(lambda x: torch.ones(x.shape[0], *x.shape[-2:]), num_samples=3)
    metric.update(torch.rand(4, 3, 8, 8))
    assert metric.compute().item() == 0.0


def test_channel_mean_explainer_by_hand() -> None:
    radius, samples, seed = 0.02, 5, 7
    images = torch.full((2, 3, 4, 4), 0.5)  # no clamping for |u| <= 0.02
    metric = MaxSensitivity(lambda x: x.mean(dim=1), radius=radius, num_samples=samples, seed=seed)
    metric.update(images)
    value = metric.compute().item()
    # |mean_c u| <= r per pixel, ||Phi(x)|| = 0.5 * sqrt(16) -> ratio <= r * 4 / 2 = 2 r
    assert 0 < value <= 2 * radius
    generator = torch.Generator().manual_seed(seed)
    worst = torch.zeros(2)
    for _ in range(samples):
        noise = torch.rand(images.shape, generator=generator) * (2 * radius) - radius
        change = noise.mean(dim=1).flatten(1).norm(dim=1) / 2.0
        worst = torch.maximum(worst, change)
    assert value == pytest.approx(worst.mean().item(), rel=1e-4)


def test_invalid_options() -> None:
    with pytest.raises(ValueError):
        MaxSensitivity(lambda x: x, radius=-1)
    with pytest.raises(ValueError):
        MaxSensitivity(lambda x: x, num_samples=0)
