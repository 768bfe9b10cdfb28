r"""SmoothGrad and VarGrad (Smilkov et al., 2017; Adebayo et al., 2018) over any input-gradient
method, batched over the noise draws.

For a wrapped method ``E`` with per-pixel attributions ``A_E(x)`` ``(B, 3, H, W)`` (vanilla
gradient, guided backpropagation, Integrated Gradients, ...) and ``n`` draws
``eps_s ~ N(0, sigma^2)`` per pixel and channel,

.. math:: \mathrm{SG}(x) = \frac1n \sum_s A_E(x + \epsilon_s), \qquad
          \mathrm{VG}(x) = \frac1n \sum_s A_E(x + \epsilon_s)^2 - \mathrm{SG}(x)^2

(captum's ``NoiseTunnel`` with ``smoothgrad`` / ``vargrad``; the noisy images are not clipped).
The ``n * B`` noisy images go to the wrapped method in chunks of ``batch_size``. The noise comes
from a generator seeded with ``seed`` at every call, so a call is reproducible. Map: the
reduction of the averaged attributions (default ``max_ch |.|``, as the gradient methods).
Passes per image: 1 clean forward + ``n`` times the wrapped method's passes per image.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from lcam.backbone import FrozenBackbone
from lcam.explainers.base import Explainer, Targets, resolve_targets
from lcam.explainers.input_paths import ChannelReduction, InputAttribution, reduce_channels
from lcam.explainers.registry import get_explainer, register_explainer

__all__ = ["SmoothGrad"]


@register_explainer("smoothgrad")
class SmoothGrad(Explainer):
    """SmoothGrad / VarGrad over the registered input-attribution method ``method``.

    Args:
        backbone: the frozen classifier.
        method: registry name of the wrapped method; it must have ``attributions(images,
            targets)`` (``gradient``, ``guided_backprop``, ``deconvnet``, ``guided_gradcam``,
            ``integrated_gradients``, ``gradient_shap``).
        num_samples: ``n``, noise draws per image.
        stdev: ``sigma`` in [0, 1] image units (0.15 is the paper's 15 % of the value range).
        aggregate: ``"smoothgrad"`` (mean) or ``"vargrad"`` (variance).
        batch_size: most noisy images per call of the wrapped method.
        seed: seed of the noise generator (reset at every call).
        reduce: colour reduction of the aggregated attributions.
        method_options: keyword options of the wrapped method.
    """

    def __init__(
        self,
        backbone: FrozenBackbone,
        method: str = "gradient",
        num_samples: int = 16,
        stdev: float = 0.15,
        aggregate: Literal["smoothgrad", "vargrad"] = "smoothgrad",
        batch_size: int = 64,
        seed: int = 0,
        reduce: ChannelReduction = "abs_max",
        method_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(backbone)
        if num_samples < 1 or batch_size < 1 or stdev < 0:
            raise ValueError("num_samples and batch_size must be >= 1 and stdev >= 0")
        if aggregate not in ("smoothgrad", "vargrad"):
            raise ValueError(f"aggregate must be smoothgrad or vargrad, got {aggregate!r}")
        self.method = get_explainer(method, backbone, **(method_options or {}))
        if not callable(getattr(self.method, "attributions", None)):
            raise ValueError(
                f"{method!r} has no per-pixel attributions; SmoothGrad wraps gradient, "
                "guided_backprop, deconvnet, guided_gradcam, integrated_gradients or gradient_shap"
            )
        reduce_channels(torch.zeros(1, 3, 1, 1), reduce)
        self.num_samples, self.stdev, self.aggregate = num_samples, stdev, aggregate
        self.batch_size, self.seed, self.reduce = batch_size, seed, reduce
        self._count_passes(num_samples)

    def _count_passes(self, draws: int) -> None:
        """Per-image passes of a call with ``draws`` noisy copies (stated before any call)."""
        forward, backward = self._per_point()
        self.forward_passes = 1.0 + draws * forward
        self.backward_passes = draws * backward

    def _per_point(self) -> tuple[float, float]:
        """Forward and backward passes the wrapped method spends per noisy image."""
        if isinstance(self.method, InputAttribution):
            return self.method.points_per_image, self.method.points_per_image
        return float(self.method.forward_passes), float(self.method.backward_passes)

    def draw_noise(self, images: Tensor) -> Tensor:
        """The ``(n, B, 3, H, W)`` noise of a call (same ``seed``, same noise)."""
        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.randn((self.num_samples, *images.shape), generator=generator)
        return (noise * self.stdev).to(images.device, images.dtype)

    def _wrapped(self, points: Tensor, targets: Tensor) -> Tensor:
        if isinstance(self.method, InputAttribution):
            return self.method.attribute(points, targets)
        return self.method.attributions(points, targets)[0]  # type: ignore[operator]

    def attributions(
        self, images: Tensor, targets: Targets = None, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Aggregated attributions ``(B, 3, H, W)``, clean logits ``(B, K)``, classes ``(B,)``.

        Args:
            images: ``(B, 3, H, W)`` in [0, 1].
            targets: classes to explain (``None``: the predicted class).
            noise: ``(n, B, 3, H, W)`` to add instead of :meth:`draw_noise`'s.
        """
        with torch.no_grad():
            logits = self.backbone(images)
        resolved = resolve_targets(logits, targets)
        noise = self.draw_noise(images) if noise is None else noise.to(images)
        points = (images + noise).flatten(0, 1)
        repeated = resolved.repeat(len(noise))
        total = torch.zeros_like(images)
        squares = torch.zeros_like(images)
        for start in range(0, len(points), self.batch_size):
            stop = min(start + self.batch_size, len(points))
            chunk = self._wrapped(points[start:stop], repeated[start:stop])
            index = torch.arange(start, stop, device=images.device) % len(images)
            total.index_add_(0, index, chunk)
            squares.index_add_(0, index, chunk.square())
        mean = total / len(noise)
        result = mean if self.aggregate == "smoothgrad" else squares / len(noise) - mean.square()
        self._count_passes(len(noise))
        return result, logits, resolved

    def compute_maps(self, images: Tensor, targets: Targets) -> tuple[Tensor, Tensor, Tensor]:
        attributions, logits, resolved = self.attributions(images, targets)
        return reduce_channels(attributions, self.reduce), logits, resolved
