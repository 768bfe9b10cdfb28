r"""GradientSHAP (Lundberg & Lee, NeurIPS 2017; captum's ``GradientShap``), batched over samples.

An expectation of Integrated Gradients over a distribution of baselines, estimated with ``n``
samples per image: for sample ``s`` a baseline ``r_s`` drawn from the ``R`` reference images,
a point ``alpha_s ~ U(0, 1)`` on the path and noise ``eps_s ~ N(0, sigma^2)``,

.. math:: \tilde x_s = x + \epsilon_s, \qquad
          A = \frac1n \sum_s (\tilde x_s - r_s) \odot
          \partial_x y_c\big(r_s + \alpha_s (\tilde x_s - r_s)\big)

``(B, 3, H, W)``, with ``y_c`` the pre-softmax logit of the explained class and ``x`` the [0, 1]
image. The draws come from a generator seeded with ``seed`` at every call
(:meth:`GradientSHAP.draw`), or are given (:class:`ShapSamples`). The ``n * B`` points are
differentiated together in chunks of ``batch_size``. Map: ``|sum_ch A|``. Passes per image:
``n + 1`` forwards (one clean), ``n`` backwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lcam.backbone import FrozenBackbone
from lcam.explainers.input_paths import ChannelReduction, InputAttribution, input_gradients
from lcam.explainers.registry import register_explainer

__all__ = ["GradientSHAP", "ShapSamples"]


@dataclass
class ShapSamples:
    """The random draws of one call for ``B`` images and ``n`` samples.

    Attributes:
        noise: ``(n, B, 3, H, W)`` added to the images.
        baseline_index: ``(n, B)`` long, rows of the ``(R, 3, H, W)`` references.
        alphas: ``(n, B)`` positions on the path in [0, 1].
    """

    noise: Tensor
    baseline_index: Tensor
    alphas: Tensor


@register_explainer("gradient_shap")
class GradientSHAP(InputAttribution):
    """GradientSHAP (see the module doc).

    Args:
        backbone: the frozen classifier.
        baselines: ``(R, 3, H, W)`` reference images in [0, 1] scale (at the explained images'
            size); default: a black and a white image.
        num_samples: ``n``, samples per image (captum's ``n_samples``).
        stdev: ``sigma`` of the noise added to the images (captum's ``stdevs``).
        seed: seed of the draws (reset at every call).
        batch_size: most points per forward/backward.
        reduce: colour reduction of the attributions.
    """

    def __init__(
        self,
        backbone: FrozenBackbone,
        baselines: Tensor | None = None,
        num_samples: int = 16,
        stdev: float = 0.0,
        seed: int = 0,
        batch_size: int = 64,
        reduce: ChannelReduction = "abs_sum",
    ) -> None:
        super().__init__(backbone, batch_size=batch_size, reduce=reduce)
        if num_samples < 1 or stdev < 0:
            raise ValueError("num_samples must be >= 1 and stdev >= 0")
        if baselines is not None and (baselines.dim() != 4 or baselines.shape[1] != 3):
            raise ValueError(f"baselines must be (R, 3, H, W), got {tuple(baselines.shape)}")
        self.baselines = baselines
        self.num_samples, self.stdev, self.seed = num_samples, stdev, seed
        self.points_per_image = float(num_samples)

    def references(self, images: Tensor) -> Tensor:
        """The ``(R, 3, H, W)`` baselines for ``images`` ``(B, 3, H, W)``."""
        if self.baselines is None:
            black = torch.zeros_like(images[0])
            return torch.stack([black, torch.ones_like(black)])
        return self.baselines.to(images.device, images.dtype)

    def draw(self, images: Tensor) -> ShapSamples:
        """The draws of a call on ``images`` ``(B, 3, H, W)`` (same ``seed``, same draws)."""
        generator = torch.Generator().manual_seed(self.seed)
        shape = (self.num_samples, len(images))
        noise = torch.randn((*shape, *images.shape[1:]), generator=generator) * self.stdev
        count = len(self.references(images[:1]))
        index = torch.randint(count, shape, generator=generator)
        alphas = torch.rand(shape, generator=generator, dtype=torch.float64)
        device = images.device
        return ShapSamples(noise.to(device, images.dtype), index.to(device), alphas.to(device))

    def attribute(
        self, images: Tensor, targets: Tensor, samples: ShapSamples | None = None
    ) -> Tensor:
        """``(B, 3, H, W)`` attributions of ``images`` to classes ``targets`` ``(B,)``, with the
        given ``samples`` or those of :meth:`draw`."""
        samples = self.draw(images) if samples is None else samples
        noisy = images + samples.noise.to(images)  # (n, B, 3, H, W)
        references = self.references(images)[samples.baseline_index]
        alphas = samples.alphas.to(images)[..., None, None, None]
        delta = noisy - references
        points = alphas * noisy + (1 - alphas) * references  # captum's rounding, bit for bit
        grads = input_gradients(
            self.backbone,
            points.flatten(0, 1),
            targets.repeat(len(points)),
            self.batch_size,
        ).view(points.shape)
        return (delta * grads).mean(dim=0)
