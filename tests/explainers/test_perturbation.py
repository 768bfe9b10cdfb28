"""RISE and occlusion: planted answers, exact formulas, seeds and pass counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import PassCounter, planted_backbone, tiny_backbone

import lcam.explainers.perturbation as perturbation
from lcam.backbone import FrozenBackbone
from lcam.explainers.registry import EXPLAINERS

SIZE = 32


def blocky_images(batch: int = 1, seed: int = 0, block: int = 8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    colours = 0.3 + 0.7 * torch.rand(batch, 3, SIZE // block, SIZE // block, generator=generator)
    return F.interpolate(colours, scale_factor=block, mode="nearest")


def assert_planted(maps: torch.Tensor, margin: float) -> None:
    inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    inside[: SIZE // 2, : SIZE // 2] = True
    for saliency in maps:
        row, col = divmod(int(saliency.argmax()), SIZE)
        assert inside[row, col], f"argmax at ({row}, {col}) is outside the planted region"
        gap = saliency[inside].mean() - saliency[~inside].mean()
        assert gap > margin, f"inside - outside = {gap:.3f}"


def test_registered() -> None:
    assert EXPLAINERS["rise"] is perturbation.RISE
    assert EXPLAINERS["occlusion"] is perturbation.Occlusion


def test_rise_planted_region() -> None:
    images = blocky_images()
    explainer = perturbation.RISE(planted_backbone(images), num_masks=1000, s=4, batch_size=250)
    result = explainer.explain(images, targets=0)
    assert_planted(result.maps, margin=0.3)


def test_occlusion_planted_region() -> None:
    images = blocky_images()
    explainer = perturbation.Occlusion(planted_backbone(images), patch_size=8, stride=4)
    result = explainer.explain(images, targets=0)
    assert_planted(result.maps, margin=0.5)
    # the score does not depend on pixels outside the quadrant: patches there change nothing
    raw, _, _ = explainer.compute_maps(images, 0)
    assert raw[0, SIZE // 2 + 4 :, :].abs().max() < 1e-6
    assert raw[0, :, SIZE // 2 + 4 :].abs().max() < 1e-6


def test_occlusion_exact_values() -> None:
    """Non-overlapping 16x16 patches: the map of a quadrant is its own score drop."""
    images = blocky_images()
    backbone = planted_backbone(images)
    explainer = perturbation.Occlusion(backbone, patch_size=16, stride=16, fill=0.5, score="logit")
    raw, logits, _ = explainer.compute_maps(images, 0)
    occluded = images.clone()
    occluded[..., :16, :16] = 0.5
    expected = logits[0, 0] - backbone(occluded)[0, 0]
    assert torch.allclose(raw[0, :16, :16], expected.expand(16, 16), atol=1e-5)
    assert raw[0, 16:].abs().max() < 1e-6 and raw[0, :, 16:].abs().max() < 1e-6
    assert explainer.forward_passes == 4 + 1


def test_occlusion_covers_border_and_averages() -> None:
    """Side 30, patch 8, stride 8: positions 0, 8, 16 and 22 (flush with the border)."""
    rows = perturbation.Occlusion._windows(30, 8, 8, torch.device("cpu"))
    assert rows.shape == (4, 30)
    assert rows.any(0).all()
    assert rows[-1].nonzero().flatten().tolist() == list(range(22, 30))


def test_rise_matches_formula_and_is_chunk_invariant() -> None:
    backbone = tiny_backbone()
    images = torch.rand(2, 3, SIZE, SIZE)
    targets = torch.tensor([1, 3])
    explainer = perturbation.RISE(backbone, num_masks=50, s=5, p=0.4, batch_size=7)
    raw, _, _ = explainer.compute_maps(images, targets)

    masks = explainer.masks((SIZE, SIZE))
    assert masks.shape == (50, SIZE, SIZE)
    assert masks.min() >= 0 and masks.max() <= 1
    assert 0.25 < masks.mean() < 0.55  # about p
    with torch.no_grad():
        expected = torch.stack(
            [
                torch.einsum(
                    "n,nhw->hw",
                    backbone(images[b] * masks[:, None]).softmax(1)[:, targets[b]],
                    masks,
                )
                for b in range(2)
            ]
        ) / (50 * 0.4)
    assert torch.allclose(raw, expected, atol=1e-5)

    other, _, _ = perturbation.RISE(backbone, num_masks=50, s=5, p=0.4, batch_size=64).compute_maps(
        images, targets
    )
    assert torch.allclose(raw, other, atol=1e-5)


def test_rise_seeds() -> None:
    backbone = tiny_backbone()
    images = torch.rand(1, 3, SIZE, SIZE)
    first = perturbation.RISE(backbone, num_masks=40, seed=3).explain(images).maps
    again = perturbation.RISE(backbone, num_masks=40, seed=3).explain(images).maps
    other = perturbation.RISE(backbone, num_masks=40, seed=4).explain(images).maps
    assert torch.equal(first, again)
    assert not torch.allclose(first, other, atol=1e-3)
    state = torch.random.get_rng_state()
    perturbation.RISE(backbone, num_masks=5, seed=None).explain(images)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("rise", {"num_masks": 30, "batch_size": 8}, 31),
        ("occlusion", {"patch_size": 16, "stride": 8, "batch_size": 4}, 3 * 3 + 1),
    ],
)
def test_forward_pass_counts(name: str, options: dict, expected: int) -> None:
    backbone = tiny_backbone()
    images = torch.rand(3, 3, SIZE, SIZE)
    counter = PassCounter(backbone.model.stem[0], backbone.model.fc)
    try:
        result = EXPLAINERS[name](backbone, **options).explain(images)
    finally:
        counter.remove()
    assert result.forward_passes == expected == counter.full / 3 == counter.tail / 3
    assert result.backward_passes == 0
    assert result.maps.shape == (3, SIZE, SIZE)


def test_occlusion_matches_captum() -> None:
    from captum.attr import Occlusion as CaptumOcclusion

    torch.manual_seed(0)
    # occlusion never reads target-layer features; layer3 (2 x 2 at 32 px) keeps the backbone's
    # layout probe away from layer4's 1 x 1 output
    model = torchvision.models.resnet18(num_classes=4)
    backbone = FrozenBackbone(model, input_size=32, target_layer="layer3")
    images = torch.rand(2, 3, 32, 32)
    targets = torch.tensor([1, 3])
    ours, _, _ = perturbation.Occlusion(backbone, patch_size=8, stride=4).compute_maps(
        images, targets
    )
    reference = CaptumOcclusion(lambda x: backbone(x).softmax(dim=1)).attribute(
        images, sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4), baselines=0.0, target=targets
    )
    # the comparison means something only if the reference map is not (near) zero or flat:
    # its peaks are 0.05-0.08 in probability and it varies over the image
    reference = reference[:, 0]
    assert reference.abs().amax(dim=(1, 2)).min() > 0.02
    assert reference.flatten(1).std(dim=1).min() > 5e-3
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
