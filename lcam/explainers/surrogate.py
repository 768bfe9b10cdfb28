"""Local surrogate explainers on superpixels: LIME and KernelSHAP.

Both split each image into ``M`` superpixels (scikit-image quickshift or SLIC, run per image on
the CPU; the label maps then live on the backbone's device), draw ``S`` binary samples
``z in {0, 1}^M`` (``z_j = 1``: superpixel ``j`` shown, ``0``: filled with a colour or a blurred
copy of the image), evaluate the class probability ``f(z)`` of every sample with batched forward
passes, and fit a weighted linear model ``f(z) ~ phi_0 + sum_j phi_j z_j``. The map paints each
superpixel with its coefficient ``phi_j`` (signed; the explainer base min-max normalises).

* **LIME** (Ribeiro et al., KDD 2016): uniform random samples, weights from an exponential kernel
  on the cosine distance to the all-on sample, ridge fit with a free intercept.
* **KernelSHAP** (Lundberg & Lee, NeurIPS 2017): Shapley-kernel weights, ``phi_0 = f(all off)``
  and the efficiency constraint ``sum_j phi_j = f(all on) - f(all off)`` imposed exactly.

Samples are stored as ``(B, S, M)`` boolean tensors (``M`` = the largest superpixel count of the
batch; columns beyond an image's own count are always off and get coefficient 0); pixel masks
are built chunk by chunk by gathering the samples through the label maps, and each chunk of
perturbed images is written straight into a channels-last batch on the CPU (the faster layout
for CPU convolutions; see :func:`~lcam.explainers.perturbation.perturbed_batch`).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from skimage.segmentation import quickshift, slic
from torch import Tensor

from lcam.backbone import FrozenBackbone
from lcam.explainers.base import Explainer, Targets, resolve_targets
from lcam.explainers.perturbation import (
    class_scores,
    evaluate_pairs,
    fill_tensor,
    make_generator,
    perturbed_batch,
)
from lcam.explainers.registry import register_explainer

__all__ = [
    "LIME",
    "KernelSHAP",
    "SuperpixelSurrogate",
    "SurrogateFit",
    "gaussian_blur",
    "weighted_ridge",
]

SegmentationFn = Callable[[np.ndarray], np.ndarray]
"""``(H, W, 3)`` float image in [0, 1] -> ``(H, W)`` integer superpixel labels."""

_SEGMENTATION_DEFAULTS: dict[str, dict[str, Any]] = {
    # lime's defaults for quickshift; SLIC with about 50 regions, labels from 0.
    "quickshift": {"kernel_size": 4, "max_dist": 200, "ratio": 0.2},
    "slic": {"n_segments": 50, "compactness": 10.0, "start_label": 0},
}


@dataclass
class SurrogateFit:
    """A fitted surrogate for a batch of ``B`` images (``M`` = largest superpixel count).

    Attributes:
        labels: ``(B, H, W)`` int64 superpixel index of each pixel (``0..M_b - 1``).
        num_superpixels: ``(B,)`` int64 ``M_b``.
        coefficients: ``(B, M)`` ``phi_j`` (0 for ``j >= M_b``).
        intercept: ``(B,)`` ``phi_0``.
        samples: ``(B, S, M)`` bool, ``True`` = superpixel shown.
        scores: ``(B, S)`` class probability of each sample.
        logits: ``(B, K)`` clean logits.
        targets: ``(B,)`` explained classes.
    """

    labels: Tensor
    num_superpixels: Tensor
    coefficients: Tensor
    intercept: Tensor
    samples: Tensor
    scores: Tensor
    logits: Tensor
    targets: Tensor


def _solve_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def weighted_ridge(
    design: Tensor,
    target: Tensor,
    weights: Tensor,
    ridge: float,
    *,
    fit_intercept: bool = True,
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Batched weighted ridge regression solved on the normal equations.

    With the weights normalised to sum to one per problem, ``w_i = weights_i / sum(weights)``,

    .. math::
        \min_{\beta_0, \beta} \sum_i w_i (y_i - \beta_0 - x_i^\top \beta)^2
            + \lambda \lVert \beta \rVert^2

    (the intercept is not penalised; it is eliminated by weighted centring as scikit-learn's
    ``Ridge`` does, so ``Ridge(alpha=lambda * sum(weights))`` gives the same solution).

    Args:
        design: ``(B, S, P)`` regressors ``x``.
        target: ``(B, S)`` responses ``y``.
        weights: ``(B, S)`` non-negative sample weights.
        ridge: ``lambda >= 0``.
        fit_intercept: fit ``beta_0``; otherwise ``beta_0 = 0``.
        valid: ``(B, P)`` bool, columns that exist (the others are padding and get ``beta = 0``).

    Returns:
        ``beta`` ``(B, P)`` and ``beta_0`` ``(B,)`` in the dtype of ``design``.
    """
    dtype = _solve_dtype(design.device)
    x, y, w = design.to(dtype), target.to(dtype), weights.to(dtype)
    w = w / w.sum(dim=1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    if valid is not None:
        x = x * valid[:, None, :].to(dtype)
    if fit_intercept:
        mean_x = torch.einsum("bs,bsp->bp", w, x)
        mean_y = (w * y).sum(dim=1)
        x, y = x - mean_x[:, None, :], y - mean_y[:, None]
    gram = torch.einsum("bsp,bs,bsq->bpq", x, w, x)
    rhs = torch.einsum("bsp,bs,bs->bp", x, w, y)
    diagonal = torch.full(gram.shape[:2], float(ridge), dtype=dtype, device=gram.device)
    if valid is not None:
        diagonal = torch.where(valid, diagonal, torch.ones_like(diagonal))
    beta = torch.linalg.solve(gram + torch.diag_embed(diagonal), rhs[..., None])[..., 0]
    intercept = mean_y - (mean_x * beta).sum(dim=1) if fit_intercept else y.new_zeros(len(y))
    return beta.to(design.dtype), intercept.to(design.dtype)


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)`` images (radius ``ceil(3 sigma)``, replicated
    borders)."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    vertical = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    out = F.conv2d(
        F.pad(images, (radius, radius, 0, 0), mode="replicate"), horizontal, groups=channels
    )
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="replicate"), vertical, groups=channels)


class SuperpixelSurrogate(Explainer):
    """Shared machinery of LIME and KernelSHAP (see the module docstring).

    Subclasses define the sampling (:meth:`draw_samples`) and the fit (:meth:`solve`).

    Passes per image: ``num_samples`` forwards (the first sample shows every superpixel, i.e. it
    is the clean image, whose score comes from the clean pass), no backward.

    Args:
        backbone: the frozen classifier.
        num_samples: ``S``, samples per image (including the all-on sample).
        segmentation: ``"quickshift"``, ``"slic"`` or a function ``(H, W, 3) float image in [0,1]
            -> (H, W) int labels``. Runs per image on the CPU (the one CPU step).
        segmentation_options: keyword arguments of the scikit-image function, merged over the
            defaults (quickshift: lime's ``kernel_size=4, max_dist=200, ratio=0.2``; slic:
            ``n_segments=50, compactness=10, start_label=0``).
        fill: what hidden superpixels show: an RGB colour in [0, 1] (default black) or
            ``"blur"`` (a Gaussian-blurred copy of the image, std ``blur_sigma`` pixels).
        blur_sigma: standard deviation of the blur in pixels.
        ridge: ``lambda`` of :func:`weighted_ridge` (on sample weights normalised to sum 1).
        batch_size: perturbed images per forward pass.
        seed: seed of the samples (same seed, same map); ``None`` draws fresh samples.
    """

    backward_passes = 0.0
    min_samples = 2

    def __init__(
        self,
        backbone: FrozenBackbone,
        num_samples: int = 1000,
        segmentation: Literal["quickshift", "slic"] | SegmentationFn = "quickshift",
        segmentation_options: Mapping[str, Any] | None = None,
        fill: Sequence[float] | Literal["blur"] = (0.0, 0.0, 0.0),
        blur_sigma: float = 5.0,
        ridge: float = 1e-5,
        batch_size: int = 64,
        seed: int | None = 0,
    ) -> None:
        super().__init__(backbone)
        if num_samples < self.min_samples:
            raise ValueError(f"num_samples must be >= {self.min_samples}, got {num_samples}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if callable(segmentation):
            if segmentation_options:
                raise ValueError("segmentation_options apply to 'quickshift' and 'slic' only")
        elif segmentation not in _SEGMENTATION_DEFAULTS:
            raise ValueError(
                f"segmentation must be 'quickshift', 'slic' or a function, got {segmentation!r}"
            )
        if isinstance(fill, str):
            if fill != "blur":
                raise ValueError(f"fill must be an RGB colour or 'blur', got {fill!r}")
        else:
            fill_tensor(fill, torch.device("cpu"))  # validate
        if blur_sigma <= 0 or ridge < 0:
            raise ValueError("blur_sigma must be > 0 and ridge >= 0")
        self.num_samples, self.segmentation = num_samples, segmentation
        self.segmentation_options = dict(segmentation_options or {})
        self.fill, self.blur_sigma, self.ridge = fill, blur_sigma, ridge
        self.batch_size, self.seed = batch_size, seed
        self.forward_passes = float(num_samples)

    def segment(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Superpixels of ``(B, 3, H, W)`` images: labels ``(B, H, W)`` int64 (``0..M_b - 1``)
        and counts ``(B,)`` on the device."""
        if callable(self.segmentation):
            function: SegmentationFn = self.segmentation
        else:
            options = {**_SEGMENTATION_DEFAULTS[self.segmentation], **self.segmentation_options}
            method = quickshift if self.segmentation == "quickshift" else slic

            def function(image: np.ndarray) -> np.ndarray:
                return method(image, **options)

        arrays = images.detach().float().cpu().permute(0, 2, 3, 1).numpy().astype(np.float64)
        labels, counts = [], []
        for array in arrays:
            raw = np.asarray(function(array))
            if raw.shape != array.shape[:2]:
                raise ValueError(
                    f"segmentation returned labels of shape {raw.shape}, expected {array.shape[:2]}"
                )
            values, inverse = np.unique(raw, return_inverse=True)
            labels.append(torch.from_numpy(inverse.reshape(raw.shape).astype(np.int64)))
            counts.append(len(values))
        return torch.stack(labels).to(self.device), torch.tensor(counts, device=self.device)

    def fill_images(self, images: Tensor) -> Tensor:
        """What hidden pixels show: ``(B, 3, H, W)`` (colour broadcast, or the blurred images)."""
        if self.fill == "blur":
            return gaussian_blur(images, self.blur_sigma)
        return fill_tensor(self.fill, images.device).to(images.dtype).expand_as(images)

    def draw_samples(self, counts: Tensor, generator: torch.Generator) -> Tensor:
        """``(B, S, M)`` bool samples: each shown superpixel on with probability 1/2 (as lime),
        the first sample all on; columns ``>= M_b`` off. Drawn on the CPU."""
        counts = counts.cpu()
        width = int(counts.max())
        samples = torch.rand((len(counts), self.num_samples, width), generator=generator) < 0.5
        samples[:, 0] = True
        return samples & (torch.arange(width) < counts[:, None])[:, None, :]

    @abstractmethod
    def solve(self, samples: Tensor, scores: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
        """Coefficients ``(B, M)`` and intercepts ``(B,)`` from samples ``(B, S, M)``, scores
        ``(B, S)`` and superpixel counts ``(B,)``."""

    @torch.no_grad()
    def fit(self, images: Tensor, targets: Targets = None) -> SurrogateFit:
        """Segment, sample, evaluate and fit the surrogate of ``(B, 3, H, W)`` images."""
        images = images.to(self.device)
        logits = self.backbone(images)
        resolved = resolve_targets(logits, targets)
        labels, counts = self.segment(images)
        samples = self.draw_samples(counts, make_generator(self.seed)).to(self.device)
        filled = self.fill_images(images)

        def evaluate(image_idx: Tensor, sample_idx: Tensor) -> Tensor:
            # (n, M) samples of the chunk -> (n, 1, H, W) pixel masks through the label maps
            shown = samples[image_idx, sample_idx + 1]
            keep = shown.gather(1, labels[image_idx].flatten(1)).view(-1, 1, *labels.shape[1:])
            inputs = perturbed_batch(len(image_idx), images)
            torch.where(keep, images[image_idx], filled[image_idx], out=inputs)
            return class_scores(self.backbone(inputs), resolved[image_idx])

        rest = evaluate_pairs(
            len(images), self.num_samples - 1, self.batch_size, evaluate, images.device
        )
        scores = torch.cat([class_scores(logits, resolved)[:, None], rest], dim=1)
        coefficients, intercept = self.solve(samples, scores, counts)
        self.forward_passes = float(self.num_samples)
        return SurrogateFit(
            labels, counts, coefficients, intercept, samples, scores, logits, resolved
        )

    def compute_maps(self, images: Tensor, targets: Targets) -> tuple[Tensor, Tensor, Tensor]:
        fit = self.fit(images, targets)
        maps = fit.coefficients.gather(1, fit.labels.flatten(1)).view_as(fit.labels)
        return maps.float(), fit.logits, fit.targets


@register_explainer("lime")
class LIME(SuperpixelSurrogate):
    r"""LIME on superpixels (Ribeiro et al., 2016), as ``lime.lime_image`` defines it.

    Samples ``z`` are uniform over ``{0, 1}^M`` (the first is all on). Each is weighted by an
    exponential kernel of its cosine distance to the all-on sample,

    .. math::
        d(z) = 1 - \frac{z \cdot \mathbf 1}{\lVert z \rVert \lVert \mathbf 1 \rVert}
             = 1 - \sqrt{|z| / M}\ (d = 1 \text{ for } z = 0), \qquad
        \pi(z) = \sqrt{\exp(-d^2 / \sigma^2)} = \exp(-d^2 / (2 \sigma^2)),

    which is lime_image's default kernel (note the square root) with width ``sigma = 0.25``; then
    ``f(z) ~ phi_0 + phi^T z`` is fitted by weighted ridge regression (:func:`weighted_ridge`,
    intercept free). lime uses ``Ridge(alpha=1)`` on unnormalised weights; ours defaults to a
    near-zero ridge on normalised weights (``alpha = ridge * sum(pi)`` in lime's terms).

    Args:
        backbone, num_samples, segmentation, segmentation_options, fill, blur_sigma, ridge,
            batch_size, seed: see :class:`SuperpixelSurrogate`.
        kernel_width: ``sigma``.
    """

    def __init__(
        self,
        backbone: FrozenBackbone,
        num_samples: int = 1000,
        segmentation: Literal["quickshift", "slic"] | SegmentationFn = "quickshift",
        segmentation_options: Mapping[str, Any] | None = None,
        fill: Sequence[float] | Literal["blur"] = (0.0, 0.0, 0.0),
        blur_sigma: float = 5.0,
        ridge: float = 1e-5,
        batch_size: int = 64,
        seed: int | None = 0,
        kernel_width: float = 0.25,
    ) -> None:
        super().__init__(
            backbone,
            num_samples,
            segmentation,
            segmentation_options,
            fill,
            blur_sigma,
            ridge,
            batch_size,
            seed,
        )
        if kernel_width <= 0:
            raise ValueError(f"kernel_width must be > 0, got {kernel_width}")
        self.kernel_width = kernel_width

    def sample_weights(self, samples: Tensor, counts: Tensor) -> Tensor:
        """``pi(z)`` ``(B, S)`` of samples ``(B, S, M)``."""
        dtype = _solve_dtype(samples.device)
        shown = samples.sum(dim=2).to(dtype)
        distance = 1 - (shown / counts[:, None].to(dtype)).sqrt()
        return torch.exp(-(distance**2) / self.kernel_width**2).sqrt()

    def solve(self, samples: Tensor, scores: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
        valid = torch.arange(samples.shape[2], device=samples.device) < counts[:, None]
        weights = self.sample_weights(samples, counts)
        return weighted_ridge(samples.float(), scores, weights, self.ridge, valid=valid)


@register_explainer("kernel_shap")
class KernelSHAP(SuperpixelSurrogate):
    r"""KernelSHAP on superpixels (Lundberg & Lee, 2017): Shapley values of the superpixels.

    The Shapley kernel of a coalition ``z`` with ``k = |z|`` of ``M`` superpixels shown is

    .. math::
        \pi(z) = \frac{M - 1}{\binom{M}{k}\, k\, (M - k)}, \qquad 0 < k < M,

    and is infinite for ``k in {0, M}``; those two samples are therefore imposed exactly, as
    KernelSHAP does: ``phi_0 = f(all off)`` and ``sum_j phi_j = f(all on) - f(all off)``
    (efficiency). Eliminating the last superpixel ``L = M - 1`` with
    ``phi_L = Delta - sum_{j<L} phi_j`` (``Delta = f(all on) - f(all off)``) leaves the
    unconstrained weighted least squares

    .. math::
        f(z) - \phi_0 - z_L \Delta \approx \sum_{j<L} (z_j - z_L)\, \phi_j

    solved with :func:`weighted_ridge` (no intercept). Sample 0 is all on, sample 1 all off, the
    others are drawn with

    * ``sampling="kernel"`` (default, as shap and captum do): ``k`` from ``P(k) ∝ 1/(k (M-k))``
      (the kernel's mass per coalition size) then a uniform subset of that size; the regression
      weight is ``pi(z) / q(z)``, a constant, since ``q(z) ∝ pi(z)``;
    * ``sampling="uniform"``: each superpixel on with probability 1/2, regression weight
      ``pi(z)``.

    Samples with ``k in {0, M}`` get weight 0 in the regression (they are the constraints).

    Args:
        backbone, num_samples, segmentation, segmentation_options, fill, blur_sigma, ridge,
            batch_size, seed: see :class:`SuperpixelSurrogate`.
        sampling: ``"kernel"`` or ``"uniform"``.
    """

    min_samples = 2

    def __init__(
        self,
        backbone: FrozenBackbone,
        num_samples: int = 1000,
        segmentation: Literal["quickshift", "slic"] | SegmentationFn = "quickshift",
        segmentation_options: Mapping[str, Any] | None = None,
        fill: Sequence[float] | Literal["blur"] = (0.0, 0.0, 0.0),
        blur_sigma: float = 5.0,
        ridge: float = 1e-5,
        batch_size: int = 64,
        seed: int | None = 0,
        sampling: Literal["kernel", "uniform"] = "kernel",
    ) -> None:
        super().__init__(
            backbone,
            num_samples,
            segmentation,
            segmentation_options,
            fill,
            blur_sigma,
            ridge,
            batch_size,
            seed,
        )
        if sampling not in ("kernel", "uniform"):
            raise ValueError(f"sampling must be 'kernel' or 'uniform', got {sampling!r}")
        self.sampling = sampling

    def draw_samples(self, counts: Tensor, generator: torch.Generator) -> Tensor:
        """``(B, S, M)`` samples: 0 all on, 1 all off, the rest as :attr:`sampling` says."""
        if self.sampling == "uniform":
            samples = super().draw_samples(counts, generator)
        else:
            counts = counts.cpu()
            batch, width = len(counts), int(counts.max())
            # CDF over sizes k = 1..M_b - 1; entries for k >= M_b - 1 are +inf so that a
            # right-sided search of u in [0, 1) returns k - 1 with k <= M_b - 1 (k = 1 if M_b <= 2).
            size = torch.arange(1, max(width, 2), dtype=torch.float64)
            mass = 1.0 / (size * (counts[:, None] - size)).clamp_min(1)
            mass = torch.where(size < counts[:, None], mass, torch.zeros_like(mass))
            cdf = mass.cumsum(dim=1) / mass.sum(dim=1, keepdim=True).clamp_min(1e-300)
            cdf = torch.where(size < counts[:, None] - 1, cdf, torch.full_like(cdf, math.inf))
            uniform = torch.rand(
                (batch, self.num_samples), generator=generator, dtype=torch.float64
            )
            sizes = torch.searchsorted(cdf, uniform, right=True) + 1  # (B, S)
            order = torch.rand((batch, self.num_samples, width), generator=generator)
            order = torch.where(torch.arange(width) < counts[:, None, None], order, 2.0)
            threshold = order.sort(dim=2).values.gather(2, sizes[..., None] - 1)
            samples = order <= threshold
        samples[:, 0] = True
        samples[:, 1] = False
        return samples & (torch.arange(samples.shape[2]) < counts.cpu()[:, None])[:, None, :]

    def sample_weights(self, samples: Tensor, counts: Tensor) -> Tensor:
        """Regression weights ``(B, S)``: ``pi(z) / q(z)`` up to a per-image constant, 0 for the
        all-off/all-on samples."""
        dtype = _solve_dtype(samples.device)
        m = counts[:, None].to(dtype)
        k = samples.sum(dim=2).to(dtype)
        inside = (k > 0) & (k < m)
        k_safe, m_safe = k.clamp(1, None), torch.maximum(m, k + 1)
        log_binomial = (
            torch.lgamma(m_safe + 1) - torch.lgamma(k_safe + 1) - torch.lgamma(m_safe - k_safe + 1)
        )
        log_pi = (m_safe - 1).log() - log_binomial - k_safe.log() - (m_safe - k_safe).log()
        if self.sampling == "kernel":  # q(z) ∝ 1 / (C(M, k) k (M - k)): the ratio is constant
            log_pi = log_pi + log_binomial + k_safe.log() + (m_safe - k_safe).log()
        log_pi = torch.where(inside, log_pi, torch.full_like(log_pi, -math.inf))
        peak = log_pi.max(dim=1, keepdim=True).values
        peak = torch.where(peak.isfinite(), peak, torch.zeros_like(peak))
        return (log_pi - peak).exp()

    def solve(self, samples: Tensor, scores: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
        batch, _, width = samples.shape
        dtype = _solve_dtype(samples.device)
        z = samples.to(dtype)
        f = scores.to(dtype)
        empty, delta = f[:, 1], f[:, 0] - f[:, 1]
        last = (counts - 1).view(batch, 1)
        z_last = z.gather(2, last[:, None, :].expand(-1, z.shape[1], 1))  # (B, S, 1)
        valid = torch.arange(width, device=samples.device) < last
        design = z - z_last
        target = f - empty[:, None] - z_last[..., 0] * delta[:, None]
        weights = self.sample_weights(samples, counts)
        phi, _ = weighted_ridge(
            design, target, weights, self.ridge, fit_intercept=False, valid=valid
        )
        phi_last = delta - phi.sum(dim=1)
        phi = phi.scatter(1, last, phi_last[:, None])
        return phi.to(scores.dtype), empty.to(scores.dtype)
