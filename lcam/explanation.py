"""The result every explainer returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Explanation"]


@dataclass
class Explanation:
    """Saliency maps and the prediction they explain, for a batch of ``B`` images.

    Pass counts are per explained image and describe what the method ran on the classifier:

    * a **forward pass** is one computation of the logits ``(K,)`` for the image or a perturbed
      copy of it, either by the full network from the input or by the *tail* alone, resumed from
      (possibly modified) target-layer features; it is what a hook on the classifier's last layer
      counts, divided by ``B``;
    * ``tail_passes`` is how many of those forward passes ran only the tail (Ablation-CAM's ``C``
      channel ablations); ``forward_passes - tail_passes`` passes ran the whole network, which is
      what a hook on the network's first layer counts, divided by ``B``;
    * a **backward pass** is one backpropagation from the logits: it may stop at the target
      layer (Grad-CAM's fast path runs it through the tail only) or reach the image (gradient
      saliency): ``backward_to_input`` counts those that reached it (gradient batches arriving
      at the network's input, divided by ``B``).

    The counts are measured while the method runs (:mod:`lcam.explainers.passes`), so they hold
    on every backbone path: under the hook fallback (models torch.fx cannot trace) a tail pass
    re-runs the whole network and is counted as a full forward.

    Attributes:
        maps: ``(B, H, W)`` float maps in [0, 1] at the input resolution (1 = most relevant).
        logits: ``(B, K)`` class scores of the clean images.
        targets: ``(B,)`` int64 index of the explained class of each image.
        forward_passes: forward passes of the classifier spent per image (full + tail-only).
        backward_passes: backward passes spent per image.
        method: registry name of the explainer that produced the maps.
        tail_passes: the part of ``forward_passes`` that ran only the layers after the target
            layer.
        degenerate: ``(B,)`` bool, ``True`` where the method's raw map was constant or all zero
            before normalisation: its map (all zeros after min-max normalisation) carries no
            information. ``None`` given means no image is degenerate.
        raw_maps: ``(B, h, w)`` float maps as the method computed them, before activation,
            resizing and normalisation (learned heads: the pre-sigmoid logit maps), e.g. for the
            AD/IC protocol, which normalises before upsampling; ``None`` if not kept.
        untrained: ``(B,)`` bool, ``True`` where a learned head explains a class that was never
            the explained class of a training image: that class's map is the head's
            initialisation (``tame_shared``: the map all classes share), not something it
            learned about that class. ``None`` given means no image is flagged
            (every non-learned method, and heads whose checkpoint records no training counts).
        backward_to_input: the part of ``backward_passes`` that reached the image.
    """

    maps: Tensor
    logits: Tensor
    targets: Tensor
    forward_passes: float
    backward_passes: float
    method: str
    tail_passes: float = 0.0
    degenerate: Tensor | None = None
    raw_maps: Tensor | None = None
    untrained: Tensor | None = None
    backward_to_input: float = 0.0

    def __post_init__(self) -> None:
        self.degenerate = self._flags("degenerate", self.degenerate)
        self.untrained = self._flags("untrained", self.untrained)

    def _flags(self, name: str, flags: Tensor | None) -> Tensor:
        """Per-image flags ``(B,)`` bool: all ``False`` for ``None``, else checked."""
        if flags is None:
            return torch.zeros(len(self.maps), dtype=torch.bool, device=self.maps.device)
        if flags.shape != (len(self.maps),):
            raise ValueError(
                f"{name} must have shape ({len(self.maps)},), got {tuple(flags.shape)}"
            )
        return flags

    @property
    def probabilities(self) -> Tensor:
        """``(B, K)`` softmax of :attr:`logits`."""
        return self.logits.softmax(dim=1)
