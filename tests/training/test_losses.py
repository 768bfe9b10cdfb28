from __future__ import annotations

import math

import pytest
import torch

from lcam.training.losses import LCAMLoss, area_loss, select_maps, total_variation_loss

CENTRE = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
CHECKER = torch.tensor([[0.0, 1.0], [1.0, 0.0]])


def test_area_by_hand() -> None:
    expected = (2 * 0.0005**0.3 + 2 * 1.0005**0.3) / 4
    assert area_loss(CHECKER) == pytest.approx(expected, rel=1e-6)
    assert area_loss(CHECKER, exponent=1.0) == pytest.approx(0.5005, rel=1e-6)


def test_total_variation_by_hand() -> None:
    # Centre spike: 2 vertical + 2 horizontal unit jumps, nothing on the border.
    assert total_variation_loss(CENTRE[None], batch_size=1) == pytest.approx(4 / 2)
    # Checkerboard: 2 + 2 jumps; border rows+columns hold 4 ones (corners count in both).
    assert total_variation_loss(CHECKER[None], batch_size=1) == pytest.approx((4 + 0.3 * 4) / 2)
    assert total_variation_loss(CHECKER[None], batch_size=2, border_weight=0.0) == pytest.approx(
        1.0
    )


def _all_class_maps() -> tuple[torch.Tensor, torch.Tensor]:
    # B=2 images, K=3 classes, 3x3 maps; class k of image b is distinguishable by value.
    attention = torch.zeros(2, 3, 3, 3)
    attention[0, 0] = CENTRE  # image 0, class 0
    attention[1, 2] = 0.5  # image 1, class 2: a flat map of 0.5
    return attention, torch.tensor([0, 2])


def test_own_selection_by_hand() -> None:
    attention, labels = _all_class_maps()
    selected = select_maps(attention, labels, "own")
    assert selected.shape == (2, 3, 3)
    torch.testing.assert_close(selected[0], CENTRE)
    # TV: the spike gives 4; the flat 0.5 map has no jumps and 8 border cells... counted as
    # 3 per edge x 4 edges = 12 cells of 0.25 -> border 3.0, weighted 0.9. Divided by 2B = 4.
    assert total_variation_loss(selected, batch_size=2) == pytest.approx((4 + 0.9) / 4)
    area = ((1.0005**0.3 + 8 * 0.0005**0.3) + 9 * 0.5005**0.3) / 18
    assert area_loss(selected) == pytest.approx(area, rel=1e-6)


def test_batch_selection_by_hand() -> None:
    attention, labels = _all_class_maps()
    selected = select_maps(attention, labels, "batch")
    assert selected.shape == (2, 2, 3, 3)  # every image x every label of the batch
    torch.testing.assert_close(selected[0, 0], CENTRE)  # image 0, label 0
    torch.testing.assert_close(selected[0, 1], torch.zeros(3, 3))  # image 0, label 2
    torch.testing.assert_close(selected[1, 0], torch.zeros(3, 3))  # image 1, label 0
    torch.testing.assert_close(selected[1, 1], torch.full((3, 3), 0.5))  # image 1, label 2
    assert total_variation_loss(selected, batch_size=2) == pytest.approx((4 + 0.9) / 4)
    area = (1.0005**0.3 + 26 * 0.0005**0.3 + 9 * 0.5005**0.3) / 36
    assert area_loss(selected) == pytest.approx(area, rel=1e-6)


def test_weighted_sum_and_cross_entropy() -> None:
    attention, labels = _all_class_maps()
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    terms = LCAMLoss(selection="own")(logits, labels, attention)
    ce = (-math.log(math.exp(2) / (math.exp(2) + 2)) - math.log(math.e / (math.e + 2))) / 2
    assert terms["ce"] == pytest.approx(ce, rel=1e-6)
    expected = 1.5 * terms["ce"] + 2 * terms["area"] + 0.01 * terms["tv"]
    assert terms["loss"] == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="'batch' or 'own'"):
        LCAMLoss(selection="diagonal")  # type: ignore[arg-type]


def _split_gradient(attention: torch.Tensor, labels: torch.Tensor, gathered: bool) -> torch.Tensor:
    """The gradient of the default loss's regularisers averaged over two half-batch "ranks", as
    DDP averages them; ``gathered``: each half sees the labels of the whole batch."""
    loss = LCAMLoss(ce_weight=0.0)  # default selection: "batch"
    logits = torch.zeros(len(labels), attention.shape[1])
    gradients = []
    for half in (slice(0, 2), slice(2, 4)):
        part = attention[half].detach().requires_grad_(True)
        map_labels = labels if gathered else None
        loss(logits[half], labels[half], part, map_labels)["loss"].backward()
        gradients.append(part.grad)
    return torch.cat(gradients) / 2


def test_batch_selection_with_the_global_labels_splits_like_ddp() -> None:
    # 4 images, 5 classes; labels differ between the halves, so each half alone sees other maps.
    attention = torch.rand(4, 5, 3, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3])
    whole = attention.clone().requires_grad_(True)
    LCAMLoss(ce_weight=0.0)(torch.zeros(4, 5), labels, whole)["loss"].backward()
    torch.testing.assert_close(_split_gradient(attention, labels, gathered=True), whole.grad)
    # Without the global labels (the old behaviour) the split optimises another objective.
    local = _split_gradient(attention, labels, gathered=False)
    assert (local - whole.grad).abs().max() > 1e-3
