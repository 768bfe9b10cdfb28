r"""Random logit (Sixt et al., ICML 2020; Quantus ``RandomLogit``): does the map change when
another class is explained?"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchmetrics import Metric

from lcam.maps import upsample_maps
from lcam.metrics.common import check_batch
from lcam.metrics.correlation import row_pearson

__all__ = ["ClassExplainFn", "RandomLogit"]

ClassExplainFn = Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor]]
"""``(images (B, 3, H, W), classes (B,) or None = predicted) -> (maps (B, H, W), classes (B,))``."""


class RandomLogit(Metric):
    r"""Mean over images of the similarity between the map of the explained class and the map
    of a random other class. Lower is better (a class-sensitive explanation changes).

    For each image, ``c`` is the explained (predicted) class and ``c'`` is drawn uniformly from
    the ``K - 1`` other classes:

    .. math:: RL(x) = \mathrm{corr}\big(\Phi_c(x), \Phi_{c'}(x)\big)

    with the Pearson correlation over pixels (Quantus's ``RandomLogit`` with
    ``similarity_func=correlation_pearson``; its default is SSIM). A constant map correlates 0.
    As in Quantus, ``Phi_c`` is the explanation the caller already has (the comparison computed
    it for its other metrics): ``update`` explains only the random class, one explanation per
    image (for a gradient method: 1 forward + 1 backward). The other classes come from a CPU
    generator seeded once at construction. States: the sum of similarities and the image count.

    Args:
        explain_fn: images, classes -> maps and the classes explained (see
            :data:`ClassExplainFn`); the same method that made the maps given to ``update``.
        num_classes: ``K`` (at least 2).
        seed: seed of the class generator.

    ``update(images, maps, targets)``: images ``(B, 3, H, W)`` in [0, 1], maps ``(B, h, w)``
    of the explained classes ``targets`` ``(B,)``. ``compute()`` returns the mean.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    similarity_sum: Tensor
    count: Tensor

    def __init__(
        self, explain_fn: ClassExplainFn, num_classes: int, seed: int = 0, **kwargs: object
    ) -> None:
        super().__init__(**kwargs)
        if num_classes < 2:
            raise ValueError(f"random logit needs at least 2 classes, got {num_classes}")
        self.explain_fn, self.num_classes = explain_fn, num_classes
        self.generator = torch.Generator().manual_seed(seed)
        self.add_state("similarity_sum", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")

    def other_classes(self, classes: Tensor) -> Tensor:
        """``(B,)`` classes drawn uniformly among the ``K - 1`` differing from ``classes``."""
        draw = torch.randint(self.num_classes - 1, classes.shape, generator=self.generator)
        draw = draw.to(classes.device)
        return draw + (draw >= classes).long()

    def update(self, images: Tensor, maps: Tensor, targets: Tensor) -> None:
        """Explain ``images`` for a random class other than ``targets`` and compare with ``maps``
        (shapes in the class docstring)."""
        check_batch(images, maps, targets)
        # Explainers enable autograd themselves; this covers any other explain_fn called from
        # evaluation code under no_grad.
        with torch.enable_grad():
            other, _ = self.explain_fn(images, self.other_classes(targets.long()))
        other = upsample_maps(other.float(), tuple(maps.shape[-2:]))
        similarity = row_pearson(maps.float().to(other.device), other)
        self.similarity_sum += similarity.sum().to(self.similarity_sum.device)
        self.count += len(images)

    def compute(self) -> Tensor:
        """Mean similarity over the images seen."""
        return (self.similarity_sum / self.count.clamp_min(1)).float()
