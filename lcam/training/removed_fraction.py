r"""The removed-fraction objective: the class must fall when the map's top pixels are removed.

The L-CAM loss and the kept-fraction term (:mod:`lcam.training.kept_fraction`) only ask the class
to *survive* the map's top pixels. A map can do that and still rank pixels badly for removal: the
model may still see the class once they are gone (the evidence reaches beyond them, or the hole
they leave keeps the object's outline). This term is the destruction half of the
preservation/destruction game of real-time saliency (Dabkowski & Gal, NeurIPS 2017) and extremal
perturbations (Fong et al., ICCV 2019), on the map's own ranking.

For images ``x`` ``(B, 3, H, W)`` in [0, 1], explained classes ``c`` ``(B,)`` and the head's raw
maps ``S`` ``(B, h, w)`` (the pre-sigmoid logit maps the metrics score):

1. ``U = upsample(minmax(S))`` ``(B, H, W)``, as the metrics prepare maps;
2. for each removed fraction ``r`` with ``k = ceil(r H W)`` pixels, the soft top-``k`` region is
   ``R_r = sigma((U - q_r) / tau)``, ``q_r`` the midpoint of the ``k``-th and ``(k+1)``-th largest
   values of ``U`` (no gradient);
3. each image gets a *fill* ``b``, drawn per image and step from ``fills`` (``"black"``; ``"blur"``,
   the Gaussian blur of the image, kernel 11, sigma 5; ``"mean"``, its per-channel mean colour;
   ``"noise"``, uniform noise in [0, 1]), and

   .. math::
       x_r = x \, (1 - R_r) + b \, R_r, \qquad
       L = \frac{1}{|R|} \sum_{r \in R} -\log\big(1 - p_c(x_r) + \epsilon\big)

   with ``p_c`` the frozen model's softmax probability of ``c`` and ``epsilon = 1e-4``: the loss
   is 0 when removing the region leaves no probability on ``c``.

Cost: ``|R|`` forward and backward passes of the frozen network per image and step (the gradient
reaches the map through the network, as the kept-fraction term's does; ``sampling="one"``: one
fraction drawn per image and step, the same term in expectation); inference stays one pass.
Which comparison columns this trains on: :attr:`RemovedFractionLoss.trained_on`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.transforms.functional import gaussian_blur

from lcam.backbone import FrozenBackbone
from lcam.maps import normalise_maps, upsample_maps
from lcam.metrics.common import checked_fractions
from lcam.training.kept_fraction import Sampling, check_relaxation, top_regions

__all__ = ["REMOVAL_FILLS", "RemovedFractionLoss"]

REMOVAL_FILLS: tuple[str, ...] = ("black", "blur", "mean", "noise")
"""Values ``fills`` accepts (step 3 of the module docstring)."""

METRIC_FILLS = frozenset({"black", "blur"})
"""The fills the deletion metric itself removes pixels with (``deletion_auc``: black,
``deletion_auc_blur``: blur)."""

_EPS = 1e-4


class RemovedFractionLoss(nn.Module):
    """Log-probability that the class is gone once the map's top fractions are removed (formula
    in the module docstring).

    Usage: ``loss = objective(raw_maps, images, targets, backbone)`` with ``raw_maps``
    ``(B, h, w)`` the head's pre-sigmoid maps of the explained classes; the caller adds
    ``weight * loss`` to its own terms.

    Args:
        fractions: removed fractions ``R`` (default 5/10/20/30 %: the start of a deletion curve,
            where maps differ; past a third of the image most maps have removed the object).
        fills: what removed pixels become, one drawn per image and step (default black and blur).
        temperature: ``tau``, the softness of the region's edge in normalised map units.
        sampling: ``"all"`` (every fraction for every image) or ``"one"`` (one drawn per image).
        generator: RNG of the draws (default: the global torch RNG).
    """

    def __init__(
        self,
        fractions: Sequence[float] = (0.05, 0.1, 0.2, 0.3),
        fills: Sequence[str] = ("black", "blur"),
        temperature: float = 0.05,
        sampling: Sampling = "all",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_relaxation(temperature, sampling)
        if not fills or set(fills) - set(REMOVAL_FILLS):
            raise ValueError(f"fills must be a non-empty subset of {REMOVAL_FILLS}, got {fills}")
        self.fractions = checked_fractions(fractions)
        if 0.0 in self.fractions:
            raise ValueError("a removed fraction of 0 removes nothing and has no gradient")
        self.fills = tuple(fills)
        self.temperature = float(temperature)
        self.sampling = sampling
        self.generator = generator

    @property
    def trained_on(self) -> frozenset[str]:
        """The comparison columns this term optimises.

        With a fill the deletion metric uses (``"black"``: ``deletion_auc``; ``"blur"``:
        ``deletion_auc_blur``) the term is the start of that deletion curve, so that column is
        trained on. Fills no column uses (``"mean"``, ``"noise"``) count nothing: they remove the
        same top region, so deletion is not blind to the term, but the model sees other images.
        Insertion and ROAD (which imputes removed pixels from their neighbours) are other
        perturbations and are not counted.
        """
        column = {"black": "deletion_auc", "blur": "deletion_auc_blur"}
        return frozenset(column[fill] for fill in self.fills if fill in METRIC_FILLS)

    def fill_images(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` fills of ``(B, 3, H, W)`` images, one kind drawn per image."""
        kinds = torch.randint(len(self.fills), (len(images),), generator=self.generator)
        candidates = []
        for fill in self.fills:  # a handful of kinds, each computed for the whole batch
            if fill == "black":
                candidates.append(torch.zeros_like(images))
            elif fill == "blur":
                candidates.append(gaussian_blur(images, [11, 11], [5.0, 5.0]))
            elif fill == "mean":
                candidates.append(images.mean(dim=(2, 3), keepdim=True).expand_as(images))
            else:
                noise = torch.rand(images.shape, generator=self.generator)
                candidates.append(noise.to(device=images.device, dtype=images.dtype))
        rows = torch.arange(len(images), device=images.device)
        return torch.stack(candidates)[kinds.to(images.device), rows]

    def forward(
        self, maps: Tensor, images: Tensor, targets: Tensor, backbone: FrozenBackbone
    ) -> Tensor:
        """The scalar loss of raw maps ``(B, h, w)``, images ``(B, 3, H, W)``, targets ``(B,)``."""
        size = (images.shape[-2], images.shape[-1])
        ranked = upsample_maps(normalise_maps(maps.float()), size)  # (B, H, W)
        regions = top_regions(ranked, self.fractions, self.temperature).unsqueeze(2)
        fill = self.fill_images(images)
        removed = images + (fill - images) * regions.to(images.dtype)  # (R, B, 3, H, W)
        if self.sampling == "one":
            rows = torch.arange(len(targets), device=images.device)
            drawn = torch.randint(len(self.fractions), (len(targets),), generator=self.generator)
            logits, labels = backbone(removed[drawn.to(images.device), rows]), targets
        else:
            logits = backbone(removed.flatten(0, 1))  # (R * B, K)
            labels = targets.repeat(len(self.fractions))
        probability = logits.float().softmax(dim=1).gather(1, labels.view(-1, 1)).squeeze(1)
        return -torch.log((1 - probability).clamp_min(0) + _EPS).mean()
