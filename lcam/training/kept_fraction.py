r"""The kept-fraction objective: the class must survive when only the map's top pixels are kept.

The L-CAM loss asks the class to survive the image masked by the *whole* soft map; the AD/IC
protocol (:class:`lcam.metrics.AverageDropIncrease`) also keeps only the top 50 % and 15 % of the
pixels. A map trained at 100 % alone can spread the evidence thinly and lose it at 15 %. This term
trains at every kept fraction ``p`` the protocol scores, with the protocol's own masks, relaxed so
that the choice of pixels gets a gradient.

For images ``x`` ``(B, 3, H, W)`` in [0, 1], explained classes ``c`` ``(B,)`` and the head's raw
maps ``S`` ``(B, h, w)`` (the pre-sigmoid logit maps the protocol scores):

1. ``U = upsample(minmax(S))`` ``(B, H, W)``: per-image min-max normalisation, then bilinear
   upsampling, as the protocol does (:func:`lcam.metrics.common.prepare_maps`, differentiable);
2. for each fraction ``p`` with ``k = ceil(p H W)`` kept pixels, the threshold ``q_p`` is the
   midpoint of the ``k``-th and ``(k+1)``-th largest values of ``U`` (no gradient), and

   .. math::
       M_p = U \cdot \sigma\!\left(\frac{U - q_p}{\tau}\right), \qquad
       L = \frac{1}{|P|} \sum_{p \in P} \mathrm{CE}\big(f(x \odot M_p), c\big)

   As ``tau -> 0``, ``M_p`` is the protocol's mask ``U * 1[rank(U) < k]`` (for ``p = 1``,
   ``M_1 = U``, the L-CAM-Img forward on normalised maps).

Cost: ``|P|`` forward and backward passes of the frozen network per image and step (the gradient
flows through the network to the mask, as L-CAM-Img's does); inference stays one pass.

``sampling="one"`` (the fast recipe) draws one fraction ``p_b`` per image and step, uniformly from
``P``, and scores only ``x_b \odot M_{p_b}``:

.. math::
    \hat L = \frac{1}{B} \sum_b \mathrm{CE}\big(f(x_b \odot M_{p_b}), c_b\big), \qquad
    \mathbb{E}_{p}\,\hat L = \frac{1}{B} \sum_b \frac{1}{|P|} \sum_{p \in P}
        \mathrm{CE}\big(f(x_b \odot M_p), c_b\big) = L

(the same objective and gradient in expectation, with more variance) at one forward and backward
pass per image instead of ``|P|``. Draws use the global torch RNG on the CPU (or ``generator``), so
a seed gives the same fractions on every device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lcam.backbone import FrozenBackbone
from lcam.maps import normalise_maps, upsample_maps
from lcam.metrics.common import checked_fractions, fraction_key, keep_count

__all__ = [
    "KEPT_FRACTION_SAMPLING",
    "KeptFractionLoss",
    "Sampling",
    "check_relaxation",
    "relaxed_keep_masks",
    "top_regions",
]

Sampling = Literal["all", "one"]
KEPT_FRACTION_SAMPLING: tuple[str, ...] = ("all", "one")
"""Values ``sampling`` accepts: every fraction per image, or one drawn per image and step."""


def check_relaxation(temperature: float, sampling: str) -> None:
    """Refuse a relaxed top-fraction term's bad settings (this term's and the removed-fraction
    term's): a hard edge has no gradient; ``sampling`` must be one of
    :data:`KEPT_FRACTION_SAMPLING`."""
    if temperature <= 0:
        raise ValueError(
            f"temperature must be > 0 (a hard edge has no gradient), got {temperature}"
        )
    if sampling not in KEPT_FRACTION_SAMPLING:
        raise ValueError(f"sampling must be one of {KEPT_FRACTION_SAMPLING}, got {sampling!r}")


def relaxed_keep_masks(maps: Tensor, fractions: Sequence[float], temperature: float) -> Tensor:
    """Masks ``M_p`` ``(P, B, H, W)`` of normalised maps ``(B, H, W)`` in [0, 1] (step 2 above).

    ``temperature`` 0 gives the hard protocol masks (``U`` on the top ``k`` pixels, 0 elsewhere;
    pixels tied at the threshold are all dropped, where the protocol breaks ties by index);
    larger values soften the edge of the kept region.
    """
    return maps.unsqueeze(0) * top_regions(maps, fractions, temperature)


def top_regions(maps: Tensor, fractions: Sequence[float], temperature: float) -> Tensor:
    """The top-``p`` regions ``(P, B, H, W)`` in [0, 1] of maps ``(B, H, W)``: 1 on the ``k =
    ceil(p H W)`` largest values, 0 elsewhere, with the edge ``sigmoid((U - q_p) / tau)`` at the
    midpoint ``q_p`` of the ``k``-th and ``(k+1)``-th largest values (no gradient through it);
    ``temperature`` 0 gives the hard region (pixels tied at the threshold are all left out)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    batch, height, width = maps.shape
    pixels = height * width
    ordered = maps.detach().flatten(1).sort(dim=1, descending=True).values  # (B, H * W)
    regions = []
    for fraction in fractions:
        count = keep_count(fraction, pixels)
        if count >= pixels or count == 0:
            regions.append(torch.full_like(maps, float(count > 0)))
            continue
        threshold = (ordered[:, count - 1] + ordered[:, count]).view(batch, 1, 1) / 2
        if temperature == 0:
            regions.append((maps > threshold).to(maps.dtype))
        else:
            regions.append(torch.sigmoid((maps - threshold) / temperature))
    return torch.stack(regions)


class KeptFractionLoss(nn.Module):
    """Cross-entropy of the frozen model on images kept by the map's top fractions (formula in
    the module docstring).

    Usage: ``loss = objective(raw_maps, images, targets, backbone)`` with ``raw_maps``
    ``(B, h, w)`` the head's pre-sigmoid maps of the explained classes; the caller adds
    ``weight * loss`` to its own terms.

    Args:
        fractions: kept fractions ``P`` (default the protocol's 100 %, 50 %, 15 %).
        temperature: ``tau``, the softness of the kept region's edge in normalised map units.
        sampling: ``"all"`` (every fraction for every image, ``|P|`` passes) or ``"one"`` (one
            fraction drawn uniformly per image and step, one pass; unbiased, see the module
            docstring).
        generator: RNG of the ``"one"`` draws (default: the global torch RNG).
    """

    def __init__(
        self,
        fractions: Sequence[float] = (1.0, 0.5, 0.15),
        temperature: float = 0.05,
        sampling: Sampling = "all",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_relaxation(temperature, sampling)
        self.fractions = checked_fractions(fractions)
        self.temperature = float(temperature)
        self.sampling = sampling
        self.generator = generator

    @property
    def trained_on(self) -> frozenset[str]:
        """The comparison columns this term optimises: ``ad@<p>`` and ``ic@<p>`` at each of its
        fractions (named as :class:`~lcam.metrics.AverageDropIncrease` names them).

        Both: the term is the cross-entropy of the class on the image kept by the map's top
        ``p``, the protocol's own masks with a soft edge, and AD (the drop of the class's
        probability on that image) and IC (its increase) score that probability. ROAD LeRF at
        ``1 - p`` removes the same pixels but imputes them from their neighbours and keeps the
        others at full value; deletion/insertion change every fraction at full value: those are
        other perturbations, not counted here.
        """
        return frozenset(
            f"{kind}@{fraction_key(fraction)}"
            for fraction in self.fractions
            for kind in ("ad", "ic")
        )

    def forward(
        self, maps: Tensor, images: Tensor, targets: Tensor, backbone: FrozenBackbone
    ) -> Tensor:
        """The scalar loss of raw maps ``(B, h, w)``, images ``(B, 3, H, W)``, targets ``(B,)``."""
        size = (images.shape[-2], images.shape[-1])
        kept = upsample_maps(normalise_maps(maps.float()), size)  # (B, H, W)
        masks = relaxed_keep_masks(kept, self.fractions, self.temperature)  # (P, B, H, W)
        if self.sampling == "one":
            # The masks of all fractions cost a sort and a few maps; only the forwards are dear.
            rows = torch.arange(len(targets), device=masks.device)
            drawn = torch.randint(len(self.fractions), (len(targets),), generator=self.generator)
            chosen = masks[drawn.to(masks.device), rows]  # (B, H, W)
            logits = backbone(images * chosen.unsqueeze(1).to(images.dtype))  # (B, K)
            return F.cross_entropy(logits, targets)
        masked = images.unsqueeze(0) * masks.unsqueeze(2).to(images.dtype)  # (P, B, 3, H, W)
        logits = backbone(masked.flatten(0, 1))  # (P * B, K)
        return F.cross_entropy(logits, targets.repeat(len(self.fractions)))
