"""The result every explainer returns."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["Explanation"]


@dataclass
class Explanation:
    """Saliency maps and the prediction they explain, for a batch of ``B`` images.

    Attributes:
        maps: ``(B, H, W)`` float maps in [0, 1] at the input resolution (1 = most relevant).
        logits: ``(B, K)`` class scores of the clean images.
        targets: ``(B,)`` int64 index of the explained class of each image.
        forward_passes: forward passes of the classifier spent per image.
        backward_passes: backward passes spent per image.
        method: registry name of the explainer that produced the maps.
    """

    maps: Tensor
    logits: Tensor
    targets: Tensor
    forward_passes: float
    backward_passes: float
    method: str

    @property
    def probabilities(self) -> Tensor:
        """``(B, K)`` softmax of :attr:`logits`."""
        return self.logits.softmax(dim=1)
