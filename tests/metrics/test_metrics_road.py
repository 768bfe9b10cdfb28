"""ROAD: the noisy linear imputation and the survival score."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lcam.metrics import ROAD, noisy_linear_imputation

EDGE, DIAGONAL = 1 / 6, 1 / 12


def test_single_removed_pixel_is_the_weighted_neighbour_mean() -> None:
    image = torch.arange(75, dtype=torch.float32).view(1, 3, 5, 5) / 100
    removed = torch.zeros(1, 5, 5, dtype=torch.bool)
    removed[0, 2, 2] = True
    removed[0, 0, 0] = True  # a corner: only 3 neighbours inside the image
    imputed = noisy_linear_imputation(image, removed, noise_std=0.0)
    x = image[0]
    centre = EDGE * (x[:, 1, 2] + x[:, 3, 2] + x[:, 2, 1] + x[:, 2, 3]) + DIAGONAL * (
        x[:, 1, 1] + x[:, 1, 3] + x[:, 3, 1] + x[:, 3, 3]
    )  # the 8 weights sum to 1
    corner = (EDGE * (x[:, 0, 1] + x[:, 1, 0]) + DIAGONAL * x[:, 1, 1]) / (2 * EDGE + DIAGONAL)
    assert torch.allclose(imputed[0, :, 2, 2], centre, atol=1e-6)
    assert torch.allclose(imputed[0, :, 0, 0], corner, atol=1e-6)
    keep = ~removed[0]
    assert torch.equal(imputed[0][:, keep], image[0][:, keep])  # kept pixels untouched


def test_removed_regions_satisfy_the_mean_equations() -> None:
    generator = torch.Generator().manual_seed(3)
    image = torch.rand(2, 3, 12, 12, generator=generator)
    removed = torch.zeros(2, 12, 12, dtype=torch.bool)
    removed[0, 3:9, 2:10] = True  # a block: neighbours are unknowns too
    removed[1] = torch.rand(12, 12, generator=generator) < 0.7
    imputed = noisy_linear_imputation(image, removed, noise_std=0.0, tolerance=1e-7)
    padded = nn.functional.pad(imputed, (1, 1, 1, 1))
    inside = nn.functional.pad(torch.ones(1, 1, 12, 12), (1, 1, 1, 1))
    kernel = torch.tensor([[DIAGONAL, EDGE, DIAGONAL], [EDGE, 0, EDGE], [DIAGONAL, EDGE, DIAGONAL]])
    weights = kernel.view(1, 1, 3, 3)
    sums = nn.functional.conv2d(padded.reshape(6, 1, 14, 14), weights).view(2, 3, 12, 12)
    degree = nn.functional.conv2d(inside, weights).view(1, 1, 12, 12)
    mean = sums / degree
    hole = removed[:, None].expand_as(image)
    assert torch.allclose(imputed[hole], mean[hole], atol=1e-5)


def test_noise_only_touches_removed_pixels() -> None:
    image = torch.full((1, 3, 16, 16), 0.5)
    removed = torch.zeros(1, 16, 16, dtype=torch.bool)
    removed[0, 4:12, 4:12] = True
    generator = torch.Generator().manual_seed(0)
    imputed = noisy_linear_imputation(image, removed, noise_std=0.05, generator=generator)
    assert torch.equal(imputed[..., ~removed[0]], image[..., ~removed[0]])
    deviation = imputed[..., removed[0]] - 0.5
    assert 0.03 < deviation.std().item() < 0.07
    again = noisy_linear_imputation(
        image, removed, noise_std=0.05, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(imputed, again)


class LeftHalfModel(nn.Module):
    """Logits ``(mean of the left half of channel 0, 0.5)`` of 4x4 images."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        left = images[:, 0, :, :2].mean(dim=(1, 2))
        return torch.stack([left, torch.full_like(left, 0.5)], dim=1)


def test_road_score_by_hand() -> None:
    image = torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 4).expand(3, 4, 4)
    images = torch.stack([image, image])  # both predicted class 0 (1 > 0.5)
    left_first = torch.tensor([[4.0, 3.0, 2.0, 1.0]] * 4)
    maps = torch.stack([left_first, left_first.flip(-1)])
    metric = ROAD(LeftHalfModel(), fractions=(0.25, 0.5), batch_size=3)
    metric.update(images, maps)
    result = metric.compute()
    # 25 %: one column goes (column 0 or 3); it is imputed from its equal neighbours -> survives.
    # 50 %: removing the left half imputes it from the black right half -> class 1; removing the
    #       right half imputes it from the white left half, the left mean stays 1 -> survives.
    # image 1 (map favours the left): MoRF removes the left half, LeRF the right half;
    # image 2 (map favours the right): the other way round.
    assert set(result) == {"morf@25", "morf@50", "lerf@25", "lerf@50"}
    assert result["morf@25"].item() == 1.0
    assert result["lerf@25"].item() == 1.0
    assert result["morf@50"].item() == 0.5
    assert result["lerf@50"].item() == 0.5


def test_road_single_order_and_targets() -> None:
    image = torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 4).expand(1, 3, 4, 4)
    maps = torch.tensor([[[4.0, 3.0, 2.0, 1.0]] * 4])
    metric = ROAD(LeftHalfModel(), fractions=(0.5,), order="morf", noise_std=0.0)
    metric.update(image, maps, targets=torch.tensor([1]))
    assert metric.compute() == {"morf@50": torch.tensor(1.0)}  # class 1 is what survives
    with pytest.raises(ValueError):
        ROAD(LeftHalfModel(), order="random")
