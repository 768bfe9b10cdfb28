"""LIME and KernelSHAP: exact linear fits, lime agreement, efficiency bookkeeping, planted
answers, seeds (the exact Shapley values of a non-linear game: ``test_kernel_shap_exact.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import planted_backbone, tiny_backbone
from surrogate_cases import SIZE, raw_backbone
from torch import nn

import lcam.explainers.surrogate as surrogate
from lcam.backbone import FrozenBackbone
from lcam.explainers.registry import EXPLAINERS
from lcam.maps import gaussian_blur

GRID = 4  # 4 x 4 blocks of 8 x 8 pixels


def grid_segments(image: np.ndarray) -> np.ndarray:
    """Superpixels = the 4 x 4 blocks (a segmentation function, as users may pass)."""
    rows = np.arange(image.shape[0]) * GRID // image.shape[0]
    cols = np.arange(image.shape[1]) * GRID // image.shape[1]
    return rows[:, None] * GRID + cols[None, :]


def smooth_images(batch: int = 1, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 6, 6, generator=generator)
    return F.interpolate(coarse, size=SIZE, mode="bilinear", align_corners=False)


def blocky_images(batch: int = 1, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    colours = 0.3 + 0.7 * torch.rand(batch, 3, GRID, GRID, generator=generator)
    return F.interpolate(colours, scale_factor=SIZE // GRID, mode="nearest")


class LinearInBlocks(nn.Module):
    """P(class 0) = a_0 + sum_j a_j r_j exactly, r_j = grey mean of block j / its clean value
    (1 when shown, 0 when blacked out); logits (log p, log(1 - p))."""

    def __init__(self, clean: torch.Tensor, intercept: float, slopes: torch.Tensor) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1, bias=False)
        nn.init.constant_(self.conv.weight, 1 / 3)
        self.pool = nn.AdaptiveAvgPool2d(GRID)
        with torch.no_grad():
            self.register_buffer("clean", self.pool(self.conv(clean)).flatten(1))
        self.register_buffer("slopes", slopes)
        self.intercept = intercept

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shown = self.pool(self.conv(x)).flatten(1) / self.clean
        p = self.intercept + (shown * self.slopes).sum(dim=1, keepdim=True)
        return torch.cat([p.log(), (1 - p).log()], dim=1)


def linear_case() -> tuple[FrozenBackbone, torch.Tensor, float, torch.Tensor]:
    images = blocky_images()
    slopes = torch.linspace(-0.015, 0.035, GRID * GRID)[torch.randperm(GRID * GRID)]
    return raw_backbone(LinearInBlocks(images, 0.3, slopes)), images, 0.3, slopes


def inside_quadrant() -> torch.Tensor:
    inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    inside[: SIZE // 2, : SIZE // 2] = True
    return inside


def test_registered() -> None:
    assert EXPLAINERS["lime"] is surrogate.LIME
    assert EXPLAINERS["kernel_shap"] is surrogate.KernelSHAP


def test_lime_recovers_linear_contributions() -> None:
    backbone, images, intercept, slopes = linear_case()
    fit = surrogate.LIME(backbone, num_samples=200, segmentation=grid_segments).fit(images, 0)
    assert fit.num_superpixels.tolist() == [16]
    assert torch.allclose(fit.coefficients[0], slopes, atol=1e-3)
    assert abs(fit.intercept[0].item() - intercept) < 1e-3
    # the map paints each block with its coefficient
    raw, _, _ = surrogate.LIME(backbone, num_samples=200, segmentation=grid_segments).compute_maps(
        images, 0
    )
    assert torch.allclose(raw[0, ::8, ::8].flatten(), slopes, atol=1e-3)


@pytest.mark.parametrize("sampling", ["kernel", "uniform"])
def test_kernel_shap_recovers_linear_contributions(sampling: str) -> None:
    """Shapley values of a linear game are its slopes; phi_0 is the all-off value."""
    backbone, images, intercept, slopes = linear_case()
    explainer = surrogate.KernelSHAP(
        backbone, num_samples=200, segmentation=grid_segments, sampling=sampling
    )
    fit = explainer.fit(images, 0)
    assert torch.allclose(fit.coefficients[0], slopes, atol=1e-3)
    assert abs(fit.intercept[0].item() - intercept) < 1e-5


@pytest.mark.parametrize("sampling", ["kernel", "uniform"])
def test_kernel_shap_efficiency(sampling: str) -> None:
    """sum_j phi_j = f(all on) - f(all off), also with padding (images with different M).

    Efficiency holds by construction; this checks the constraint bookkeeping with padded
    columns. Whether the values are Shapley values is tested against the exact enumeration
    below."""
    backbone = tiny_backbone()
    images = torch.cat([smooth_images(), blocky_images()])
    explainer = surrogate.KernelSHAP(
        backbone,
        num_samples=60,
        segmentation="slic",
        sampling=sampling,
        segmentation_options={"n_segments": 12},
    )
    fit = explainer.fit(images, [2, 4])
    counts = fit.num_superpixels
    assert counts.min() >= 8 and counts[0] != counts[1]
    with torch.no_grad():
        on = backbone(images).softmax(1)[torch.arange(2), fit.targets]
        off = backbone(torch.zeros_like(images)).softmax(1)[torch.arange(2), fit.targets]
    assert torch.allclose(fit.coefficients.sum(dim=1), on - off, atol=1e-4)
    assert torch.allclose(fit.intercept, off, atol=1e-5)
    for b in range(2):
        assert torch.all(fit.coefficients[b, counts[b] :] == 0)
        assert fit.samples[b, 0, : counts[b]].all() and not fit.samples[b, 1].any()


@pytest.mark.parametrize("name", ["lime", "kernel_shap"])
def test_planted_region(name: str) -> None:
    images = blocky_images()
    explainer = EXPLAINERS[name](
        planted_backbone(images),
        num_samples=300,
        segmentation="slic",
        segmentation_options={"n_segments": 16, "compactness": 20.0},
    )
    fit = explainer.fit(images, 0)
    assert fit.num_superpixels.item() >= 8
    result = explainer.explain(images, targets=0)
    inside = inside_quadrant()
    saliency = result.maps[0]
    row, col = divmod(int(saliency.argmax()), SIZE)
    assert inside[row, col]
    assert saliency[inside].mean() - saliency[~inside].mean() > 0.4


def test_lime_fit_matches_lime_library() -> None:
    """Same samples and scores: our kernel + weighted ridge = lime's LimeBase with Ridge."""
    from lime.lime_base import LimeBase
    from sklearn.linear_model import Ridge
    from sklearn.metrics import pairwise_distances

    images = blocky_images()
    explainer = surrogate.LIME(
        planted_backbone(images), num_samples=150, segmentation=grid_segments, ridge=1e-2
    )
    fit = explainer.fit(images, 0)
    data = fit.samples[0].numpy().astype(np.float64)
    scores = fit.scores[0].double().numpy()
    distances = pairwise_distances(data, data[:1], metric="cosine").ravel()
    weights = explainer.sample_weights(fit.samples, fit.num_superpixels)[0].numpy()

    def kernel(d: np.ndarray) -> np.ndarray:  # lime_image's default kernel, width 0.25
        return np.sqrt(np.exp(-(d**2) / 0.25**2))

    assert np.allclose(weights, kernel(distances), atol=1e-10)
    labels = np.stack([scores, 1 - scores], axis=1)
    ridge = Ridge(alpha=1e-2 * kernel(distances).sum(), fit_intercept=True)
    intercept, explanation, _, _ = LimeBase(kernel).explain_instance_with_data(
        data, labels, distances, 0, 16, feature_selection="none", model_regressor=ridge
    )
    theirs = np.zeros(16)
    for feature, value in explanation:
        theirs[feature] = value
    assert np.allclose(fit.coefficients[0].numpy(), theirs, atol=1e-5)
    assert abs(fit.intercept[0].item() - intercept) < 1e-5


@pytest.mark.parametrize("name", ["lime", "kernel_shap"])
def test_seeds(name: str) -> None:
    backbone = tiny_backbone()
    images = smooth_images()
    options = {"kernel_size": 2, "max_dist": 10, "ratio": 0.5}  # about 36 superpixels at 32 px

    def run(seed: int) -> torch.Tensor:
        explainer = EXPLAINERS[name](
            backbone, num_samples=40, segmentation_options=options, seed=seed
        )  # quickshift
        return explainer.explain(images).maps

    first, again, other = run(5), run(5), run(6)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other, atol=1e-3)


def test_blur_fill() -> None:
    backbone = tiny_backbone()
    images = torch.rand(1, 3, SIZE, SIZE)
    explainer = surrogate.LIME(backbone, num_samples=10, fill="blur", blur_sigma=2.0)
    blurred = explainer.fill_images(images)
    assert blurred.shape == images.shape
    assert blurred.std() < images.std() / 2  # smoother
    assert abs(blurred.mean() - images.mean()) < 0.02
    constant = torch.full((1, 3, 8, 8), 0.25)
    assert torch.allclose(gaussian_blur(constant, 3.0), constant, atol=1e-6)
    assert explainer.explain(images).maps.shape == (1, SIZE, SIZE)


@pytest.mark.parametrize("name", ["lime", "kernel_shap"])
def test_forward_pass_counts(name: str) -> None:
    backbone = tiny_backbone()
    images = torch.rand(3, 3, SIZE, SIZE)
    counted = []
    handle = backbone.model.stem[0].register_forward_hook(
        lambda m, i, o: counted.append(o.shape[0])
    )
    try:
        # grid superpixels: no degenerate map, so no warning (whose first one may probe the
        # backbone) runs during the call
        explainer = EXPLAINERS[name](
            backbone, num_samples=25, batch_size=16, segmentation=grid_segments
        )
        result = explainer.explain(images)
    finally:
        handle.remove()
    assert result.forward_passes == 25 == sum(counted) / 3
    assert max(counted) <= 16
    assert result.backward_passes == 0


@pytest.mark.parametrize(
    ("name", "fill"),
    [
        ("lime", (0.0, 0.0, 0.0)),
        ("lime", (0.2, 0.5, 0.9)),
        ("lime", "blur"),
        ("kernel_shap", "blur"),
    ],
)
def test_batched_scores_and_maps_match_reference(name: str, fill: object) -> None:
    """The chunked fast path (gather through the label maps, channels-last batches on the CPU,
    chunks spanning two images) gives the scores and maps of a plain per-sample computation."""
    backbone = tiny_backbone()
    images = torch.cat([smooth_images(), blocky_images()])
    explainer = EXPLAINERS[name](
        backbone,
        num_samples=30,
        segmentation="slic",
        segmentation_options={"n_segments": 12},
        fill=fill,
        blur_sigma=2.0,
        batch_size=7,  # 29 samples per image: chunks cross the boundary between the images
    )
    inputs: list[torch.Tensor] = []
    handle = backbone.model.stem[0].register_forward_hook(lambda m, i, o: inputs.append(i[0]))
    try:
        fit = explainer.fit(images, [1, 3])
    finally:
        handle.remove()
    assert fit.num_superpixels[0] != fit.num_superpixels[1]
    assert all(x.is_contiguous(memory_format=torch.channels_last) for x in inputs[1:])

    if fill == "blur":
        background = gaussian_blur(images, 2.0)
    else:
        background = torch.tensor(fill).view(1, 3, 1, 1).expand_as(images)
    expected = torch.empty_like(fit.scores)
    with torch.no_grad():
        for b in range(len(images)):
            for s in range(fit.samples.shape[1]):
                shown = fit.samples[b, s][fit.labels[b]]  # (H, W)
                image = torch.where(shown, images[b], background[b]).contiguous()
                probabilities = backbone(image[None]).softmax(dim=1)[0]
                expected[b, s] = probabilities[fit.targets[b]]
    assert torch.allclose(fit.scores, expected, atol=1e-5)

    coefficients, intercept = explainer.solve(fit.samples, expected, fit.num_superpixels)
    assert torch.allclose(fit.coefficients, coefficients, atol=1e-4)
    assert torch.allclose(fit.intercept, intercept, atol=1e-5)
    maps = explainer.explain(images, [1, 3]).maps
    reference = torch.stack(
        [coefficients[b][fit.labels[b]] for b in range(len(images))]
    )  # paint each superpixel with its coefficient, then min-max normalise as the base does
    low = reference.flatten(1).min(dim=1).values.view(-1, 1, 1)
    high = reference.flatten(1).max(dim=1).values.view(-1, 1, 1)
    assert torch.allclose(maps, (reference - low) / (high - low), atol=1e-5)
