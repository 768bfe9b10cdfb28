"""Max-sensitivity: how much an explanation changes under small input perturbations."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["MaxSensitivity"]

ExplainFn = Callable[[Tensor], Tensor]
"""Images ``(B, 3, H, W)`` in [0, 1] -> maps ``(B, H, W)``."""


class MaxSensitivity(Metric):
    r"""Mean over images of the worst relative change of the map under uniform noise.

    For each image ``x`` and ``n = 1..num_samples`` draws ``u_n`` uniform in ``[-r, r]`` per
    pixel and channel,

    .. math:: SENS(x) = \max_n \frac{\| \Phi(\mathrm{clamp}(x + u_n, 0, 1)) - \Phi(x) \|_2}
                                  {\| \Phi(x) \|_2}

    with ``Phi = explain_fn`` and the Frobenius norm over the map (the denominator is clamped
    to ``1e-12``). Lower is better. The noise comes from a CPU generator seeded once at
    construction, so a fresh metric reproduces its values. One call of ``explain_fn`` per
    sample, each batched over the images.

    Args:
        explain_fn: any callable images -> ``(B, H, W)`` maps, e.g.
            ``lambda x: explainer.explain(x).maps``.
        radius: ``r``, the half-width of the uniform noise.
        num_samples: number of perturbations per image.
        seed: seed of the noise generator.

    ``update(images)``: images ``(B, 3, H, W)`` in [0, 1]. ``compute()`` returns the mean.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    sensitivity_sum: Tensor
    count: Tensor

    def __init__(
        self,
        explain_fn: ExplainFn,
        radius: float = 0.02,
        num_samples: int = 10,
        seed: int = 0,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        if radius < 0:
            raise ValueError(f"radius must be >= 0, got {radius}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.__dict__["explain_fn"] = explain_fn  # a reference only, never a submodule
        self.radius = float(radius)
        self.num_samples = num_samples
        self.generator = torch.Generator().manual_seed(seed)
        self.add_state("sensitivity_sum", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")

    def sensitivities(self, images: Tensor) -> Tensor:
        """``(B,)`` max-sensitivity of each of ``(B, 3, H, W)`` images."""
        if images.dim() != 4:
            raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        reference = self.explain_fn(images).detach().float()
        norm = reference.flatten(1).norm(dim=1).clamp_min(1e-12)
        worst = torch.zeros(images.shape[0], device=images.device)
        for _ in range(self.num_samples):
            noise = torch.rand(images.shape, generator=self.generator) * (2 * self.radius)
            noisy = (images + (noise - self.radius).to(images)).clamp(0.0, 1.0)
            change = (self.explain_fn(noisy).detach().float() - reference).flatten(1).norm(dim=1)
            worst = torch.maximum(worst, change.to(worst) / norm.to(worst))
        return worst

    def update(self, images: Tensor) -> None:
        """Accumulate the max-sensitivities of a batch."""
        self.sensitivity_sum += self.sensitivities(images).sum().to(self.sensitivity_sum)
        self.count += images.shape[0]

    def compute(self) -> Tensor:
        """Mean max-sensitivity."""
        return self.sensitivity_sum / self.count.clamp_min(1)
