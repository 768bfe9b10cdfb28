from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lcam
from lcam.data import SyntheticShapes
from lcam.evaluation.dissection import UnitAlignment, channel_quantiles, unit_alignment
from lcam.models.tiny import SHAPES_WEIGHTS


def _case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """6 images of 3 classes: channel 0 is the object mask on class-2 images, silent elsewhere;
    channel 1 is on everywhere; channel 2 is random."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1, 2, 2, 1, 2])
    masks = torch.zeros(6, 16, 16, dtype=torch.bool)
    for index in range(6):
        top, left = torch.randint(0, 8, (2,), generator=generator).tolist()
        masks[index, top : top + 6, left : left + 7] = True
    features = torch.zeros(6, 3, 16, 16)
    features[:, 0] = masks.float() * (labels == 2).float().view(-1, 1, 1)
    features[:, 1] = 1.0
    features[:, 2] = torch.rand(6, 16, 16, generator=generator)
    return features, masks, labels


def _brute_force(units: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, classes: int):
    """IoU (C, K) by loops: L_k is the mask on images of class k and empty elsewhere."""
    channels = units.shape[1]
    iou = torch.zeros(channels, classes)
    for channel in range(channels):
        for klass in range(classes):
            inter = union = 0
            for image in range(len(units)):
                unit = units[image, channel]
                objects = masks[image] if labels[image] == klass else torch.zeros_like(unit)
                inter += (unit & objects).sum().item()
                union += (unit | objects).sum().item()
            iou[channel, klass] = inter / union if union else 0.0
    return iou


def test_a_channel_equal_to_a_class_mask_has_iou_one_for_that_class() -> None:
    features, masks, labels = _case()
    metric = UnitAlignment(3, 3, thresholds=torch.tensor([0.5, 0.5, 0.5]))
    metric.update(features[:4], masks[:4], labels[:4])  # two batches: sums accumulate
    metric.update(features[4:], masks[4:], labels[4:])
    result = metric.compute()
    assert result["iou"][0, 2].item() == pytest.approx(1.0)
    assert result["best_class"][0].item() == 2 and result["best_iou"][0].item() == 1.0
    assert result["iou"][0, :2].tolist() == [0.0, 0.0]
    # A unit that fires everywhere: IoU = class object area / all pixels of the dataset.
    for klass in range(3):
        area = masks[labels == klass].sum().item()
        assert result["iou"][1, klass].item() == pytest.approx(area / (6 * 16 * 16))
    expected = _brute_force(features > 0.5, masks, labels, 3)
    assert torch.allclose(result["iou"], expected, atol=1e-6)


def test_per_image_top_fraction_and_per_class_masks_match_loops() -> None:
    features, masks, labels = _case()
    # The top 10 % (26 pixels) of an image hit only its 42 mask pixels: channel 0 is the mask.
    metric = UnitAlignment(3, 3, top_fraction=0.1)
    metric.update(features, masks, labels)
    result = metric.compute()
    assert result["iou"][0, 2].item() == pytest.approx(1.0)
    assert result["iou"][1].tolist() == [0.0, 0.0, 0.0]  # constant channel: never active
    flat = features[:, 2].flatten(1)
    cut = flat.topk(26, dim=1).values[:, -1:]
    units = torch.zeros(6, 3, 16, 16, dtype=torch.bool)
    units[:, 0] = masks & (labels == 2).view(-1, 1, 1)
    units[:, 2] = (flat >= cut).view(6, 16, 16)
    assert torch.allclose(result["iou"], _brute_force(units, masks, labels, 3), atol=1e-6)

    # Per-class masks (B, K, H, W) give the same sums as (mask, label) pairs.
    per_class = F.one_hot(labels, 3).bool()[:, :, None, None] & masks[:, None]
    other = UnitAlignment(3, 3, top_fraction=0.1)
    other.update(features, per_class)
    assert torch.allclose(other.intersection, metric.intersection)
    assert torch.allclose(other.union, metric.union)


def test_features_are_upsampled_to_the_masks_and_masks_to_a_resolution() -> None:
    features, masks, labels = _case()
    low = features[:, :1, ::2, ::2]  # (6, 1, 8, 8)
    big = masks.repeat_interleave(2, 1).repeat_interleave(2, 2)  # (6, 32, 32)
    metric = UnitAlignment(1, 3, thresholds=torch.tensor([0.5]), resolution=(16, 16))
    metric.update(low, big, labels)
    up = F.interpolate(low, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(
        metric.compute()["iou"], _brute_force(up > 0.5, masks, labels, 3), atol=1e-6
    )
    with pytest.raises(ValueError, match="labels"):
        metric.update(low, big)


@pytest.fixture(scope="module")
def backbone() -> lcam.FrozenBackbone:
    return lcam.FrozenBackbone(
        "lcam.models.TinyResNet", num_classes=6, weights=str(SHAPES_WEIGHTS), input_size=64
    )


def test_dataset_quantiles_and_alignment_on_shapes(backbone) -> None:
    data = SyntheticShapes(12, seed=3)
    loader = torch.utils.data.DataLoader(data, batch_size=6)
    thresholds = channel_quantiles(backbone, loader, 0.99, bins=4096)
    with torch.no_grad():
        features = torch.cat([backbone.body(b["image"])[0] for b in loader])
    values = features.transpose(0, 1).flatten(1)  # (C, N)
    # Within one bin of the quantile: fewer than 99 % of the values lie a bin below the
    # estimate, at least 99 % lie at most a bin above it.
    width = ((values.amax(dim=1) - values.amin(dim=1)) / 4096)[:, None] * 1.001
    assert ((values < thresholds[:, None] - width).float().mean(dim=1) < 0.99).all()
    assert ((values <= thresholds[:, None] + width).float().mean(dim=1) >= 0.99).all()
    exact = torch.quantile(values, 0.99, dim=1, interpolation="lower")
    assert ((thresholds - exact).abs() <= 0.05 * values.amax(dim=1)).float().mean() > 0.9
    with pytest.raises(ValueError, match="re-iterable"):
        channel_quantiles(backbone, iter(loader))

    names = list(data.class_names)
    rows = unit_alignment(backbone, loader, quantile=0.99, bins=4096, class_names=names)
    assert len(rows) == backbone.feature_channels
    assert [row["channel"] for row in rows] == list(range(backbone.feature_channels))
    assert all(0.0 <= row["iou"] <= 1.0 for row in rows)
    assert {row["class_name"] for row in rows} <= set(data.class_names)
    assert rows[5]["threshold"] == pytest.approx(thresholds[5].item(), rel=1e-5)
    assert max(row["iou"] for row in rows) > 0.05
    image_rows = unit_alignment(backbone, loader, threshold="image", top_fraction=0.05)
    assert all(row["threshold"] is None for row in image_rows)
