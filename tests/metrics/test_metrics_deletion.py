"""Deletion/insertion AUC on a linear toy model with hand-computed curves."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lcam.metrics import DeletionInsertion, trapezoid_auc


class MeanModel(nn.Module):
    """Class-0 probability ``q = 0.1 + 0.8 * mean(channel 0)``, linear in the pixels."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        q = 0.1 + 0.8 * images[:, 0].mean(dim=(1, 2))
        return torch.stack([q.log(), (1 - q).log()], dim=1)


# 2x2 image, mean 0.7 -> q = 0.66 (class 0). The map orders the pixels 1.0, 0.8, 0.6, 0.4.
IMAGE = torch.tensor([[1.0, 0.4], [0.8, 0.6]]).expand(1, 3, 2, 2)
MAP = torch.tensor([[[0.9, 0.1], [0.5, 0.3]]])


def test_trapezoid_auc() -> None:
    assert trapezoid_auc(torch.tensor([1.0, 1.0])).item() == pytest.approx(1.0)
    assert trapezoid_auc(torch.tensor([0.0, 1.0, 0.0])).item() == pytest.approx(0.5)
    assert trapezoid_auc(torch.tensor([[0.0, 0.5, 1.0]])).shape == (1,)


def test_deletion_and_insertion_by_hand() -> None:
    metric = DeletionInsertion(MeanModel(), steps=4, batch_size=3, baseline="black")
    metric.return_curves = True
    metric.update(IMAGE, MAP)
    result = metric.compute()
    # deletion removes 1.0, 0.8, 0.6, 0.4 in turn: means 0.7, 0.45, 0.25, 0.1, 0
    deletion = torch.tensor([0.66, 0.46, 0.30, 0.18, 0.10])
    # insertion from black inserts them in the same order: means 0, 0.25, 0.45, 0.6, 0.7
    insertion = torch.tensor([0.10, 0.30, 0.46, 0.58, 0.66])
    assert torch.allclose(result["deletion_curve"], deletion, atol=1e-5)
    assert torch.allclose(result["insertion_curve"], insertion, atol=1e-5)
    assert result["deletion_auc"].item() == pytest.approx((1.70 - 0.38) / 4, abs=1e-5)
    assert result["insertion_auc"].item() == pytest.approx((2.10 - 0.38) / 4, abs=1e-5)


def test_steps_not_dividing_the_pixel_count_round_up() -> None:
    metric = DeletionInsertion(MeanModel(), steps=3, baseline="black", return_curves=True)
    metric.update(IMAGE, MAP)
    result = metric.compute()
    # ceil(s * 4 / 3) = 0, 2, 3, 4 pixels changed
    assert torch.allclose(result["deletion_curve"], torch.tensor([0.66, 0.30, 0.18, 0.10]))
    assert result["deletion_auc"].item() == pytest.approx((1.24 - 0.38) / 3, abs=1e-5)
    assert torch.allclose(metric.fractions, torch.tensor([0, 1 / 3, 2 / 3, 1]))


def test_mean_over_images_and_given_targets() -> None:
    metric = DeletionInsertion(MeanModel(), steps=4, baseline="black")
    metric.update(IMAGE.repeat(2, 1, 1, 1), MAP.repeat(2, 1, 1), targets=torch.tensor([0, 1]))
    result = metric.compute()
    # class 1 has probability 1 - q: its AUCs are 1 - those of class 0
    assert result["deletion_auc"].item() == pytest.approx(0.5, abs=1e-5)
    assert result["insertion_auc"].item() == pytest.approx(0.5, abs=1e-5)


def test_blur_baseline() -> None:
    # a constant image is its own blur: the insertion curve is flat at q
    image = torch.full((1, 3, 16, 16), 0.5)
    metric = DeletionInsertion(MeanModel(), steps=4, return_curves=True)
    metric.update(image, torch.rand(1, 16, 16))
    curve = metric.compute()["insertion_curve"]
    assert torch.allclose(curve, torch.full((5,), 0.5), atol=1e-5)
    # otherwise insertion starts from the blurred image, not from black
    image = torch.zeros(1, 3, 16, 16)
    image[..., ::2, :] = 1.0
    blurred = metric.insertion_start(image)
    assert blurred.shape == image.shape
    assert 0.3 < blurred[0, 0, 8, 8].item() < 0.7


def test_invalid_options() -> None:
    with pytest.raises(ValueError):
        DeletionInsertion(MeanModel(), baseline="grey")
    with pytest.raises(ValueError):
        DeletionInsertion(MeanModel(), steps=0)
