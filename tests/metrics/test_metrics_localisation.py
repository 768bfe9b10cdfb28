"""Pointing game (with tolerance), energy pointing game, boxes_to_masks and mask IoU."""

from __future__ import annotations

import pytest
import torch

from lcam.metrics import EnergyPointingGame, MaskIoU, PointingGame, boxes_to_masks


def _mask() -> torch.Tensor:
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 2:4, 2:4] = True
    return mask


def _peak(row: int, column: int) -> torch.Tensor:
    maps = torch.rand(1, 8, 8) * 0.5
    maps[0, row, column] = 1.0
    return maps


def test_boxes_to_masks() -> None:
    masks = boxes_to_masks(torch.tensor([[1, 1, 3, 3], [0, 0, 4, 4], [0.6, 0, 1.4, 1]]), (4, 4))
    assert masks.shape == (3, 4, 4) and masks.dtype == torch.bool
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[1:3, 1:3] = True
    assert torch.equal(masks[0], expected)
    assert masks[1].all()
    assert not masks[2].any()  # no pixel centre inside
    wide = boxes_to_masks(torch.tensor([[0.0, 1.0, 4.0, 2.0]]), (3, 4))
    assert wide[0].tolist() == [[False] * 4, [True] * 4, [False] * 4]


@pytest.mark.parametrize(
    ("row", "column", "tolerance", "hit"),
    [
        (2, 3, 0, True),  # inside the mask
        (2, 5, 0, False),  # distance 2 to pixel (2, 3)
        (2, 5, 1, False),
        (2, 5, 2, True),
        (5, 5, 2, False),  # distance sqrt(8) to pixel (3, 3)
        (5, 5, 3, True),
    ],
)
def test_pointing_game_tolerance(row: int, column: int, tolerance: int, hit: bool) -> None:
    metric = PointingGame(tolerance=tolerance)
    metric.update(_peak(row, column), _mask())
    assert metric.compute().item() == float(hit)


def test_pointing_game_accuracy_boxes_and_empty_masks() -> None:
    metric = PointingGame(tolerance=0)
    maps = torch.cat([_peak(2, 2), _peak(6, 6), _peak(3, 3)])
    masks = torch.cat([_mask(), _mask(), torch.zeros(1, 8, 8, dtype=torch.bool)])
    metric.update(maps, masks)
    assert metric.compute().item() == 0.5  # the empty mask is not counted
    boxes = PointingGame(tolerance=0)
    boxes.update(maps[:2], boxes=torch.tensor([[2.0, 2.0, 4.0, 4.0]] * 2))
    assert boxes.compute().item() == 0.5
    with pytest.raises(ValueError):
        boxes.update(maps)


def test_pointing_game_upsamples_low_resolution_maps() -> None:
    maps = torch.zeros(1, 2, 2)
    maps[0, 1, 1] = 1.0  # the bottom-right quarter at 8x8
    metric = PointingGame(tolerance=0)
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 6:, 6:] = True
    metric.update(maps, mask)
    assert metric.compute().item() == 1.0


def test_energy_pointing_game_by_hand() -> None:
    maps = torch.tensor([[[2.0, 3.0], [1.0, 5.0]]])
    mask = torch.tensor([[[True, True], [False, False]]])
    normalised = EnergyPointingGame()
    normalised.update(maps, mask)
    # normalised map: 0.25, 0.5, 0, 1 -> 0.75 / 1.75 inside
    assert normalised.compute().item() == pytest.approx(3 / 7)
    raw = EnergyPointingGame(normalise=False)
    raw.update(maps, mask)
    raw.update(maps, boxes=torch.tensor([[0.0, 0.0, 2.0, 1.0]]))  # the same top row
    assert raw.compute().item() == pytest.approx(5 / 11)
    with pytest.raises(ValueError):
        raw.update(-maps, mask)


def test_mask_iou_by_hand() -> None:
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, :4] = torch.tensor([1.0, 0.9, 0.5, 0.2])
    maps[0, 1, 0] = 0.6  # >= 0.5: (0,0), (0,1), (0,2), (1,0)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 0, 0] = mask[0, 0, 1] = mask[0, 2, 2] = mask[0, 3, 3] = True
    metric = MaskIoU(threshold=0.5)
    metric.update(maps, mask)
    assert metric.compute().item() == pytest.approx(2 / 6)
    metric.update(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.bool))  # both empty
    assert metric.compute().item() == pytest.approx((2 / 6 + 1) / 2)
