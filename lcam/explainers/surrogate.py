r"""Local surrogate explainers on superpixels: LIME and KernelSHAP.

The shared machinery (superpixels, samples, batched scoring, the constructor's options) is
:class:`~lcam.explainers.surrogate_base.SuperpixelSurrogate`; this module holds what differs:
the sample weights and the fit.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from lcam.backbone import FrozenBackbone
from lcam.explainers.registry import register_explainer
from lcam.explainers.ridge import solve_dtype, weighted_ridge
from lcam.explainers.surrogate_base import SuperpixelSurrogate, SurrogateFit
from lcam.maps import gaussian_blur

__all__ = [
    "LIME",
    "KernelSHAP",
    "SuperpixelSurrogate",
    "SurrogateFit",
    "gaussian_blur",
    "weighted_ridge",
]


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
        self, backbone: FrozenBackbone, *args: Any, kernel_width: float = 0.25, **options: Any
    ) -> None:
        super().__init__(backbone, *args, **options)
        if kernel_width <= 0:
            raise ValueError(f"kernel_width must be > 0, got {kernel_width}")
        self.kernel_width = kernel_width

    def sample_weights(self, samples: Tensor, counts: Tensor) -> Tensor:
        """``pi(z)`` ``(B, S)`` of samples ``(B, S, M)``."""
        dtype = solve_dtype(samples.device)
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
        *args: Any,
        sampling: Literal["kernel", "uniform"] = "kernel",
        **options: Any,
    ) -> None:
        super().__init__(backbone, *args, **options)
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
        dtype = solve_dtype(samples.device)
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
        dtype = solve_dtype(samples.device)
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
