r"""The L-CAM training loss.

.. math::
    L = w_{ce}\,CE(\text{masked logits}, y) + w_{area}\,\mathrm{Area}(A) + w_{tv}\,\mathrm{TV}(A)

with :math:`\mathrm{Area}(A) = \mathrm{mean}((A + 0.0005)^{0.3})` and

.. math::
    \mathrm{TV}(A) = \frac{\sum (A_{i+1,j} - A_{i,j})^2 + \sum (A_{i,j+1} - A_{i,j})^2
        + 0.3 \sum_{\text{border}} A^2}{2B}

where the border sum runs over the first and last row and the first and last column of every map
(corner pixels count twice) and ``B`` is the number of images the maps belong to. Both
regularisers act on the sigmoid maps at head resolution. Defaults: ``w_ce = 1.5``,
``w_area = 2``, ``w_tv = 0.01``.

With ``selection="batch"`` (the official code's behaviour) the regularisers see, for every image,
the maps of every label of the **global** batch. Under DDP a rank holds only its share of the
images, so the caller passes the labels of all ranks (``map_labels``, see
:func:`lcam.training.global_batch.global_labels`): each rank then sums over its images x all
labels, and the DDP average of the ranks' gradients is the single-process gradient.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lcam.metrics.common import fraction_key

__all__ = ["LCAMLoss", "MapSelection", "area_loss", "select_maps", "total_variation_loss"]

MapSelection = Literal["batch", "own"]


def area_loss(attention: Tensor, exponent: float = 0.3, offset: float = 0.0005) -> Tensor:
    """``mean((A + offset) ** exponent)`` over maps ``A`` of any shape ``(..., h, w)``."""
    return (attention + offset).pow(exponent).mean()


def total_variation_loss(attention: Tensor, batch_size: int, border_weight: float = 0.3) -> Tensor:
    """Squared total variation plus a border term of maps ``(..., h, w)``, divided by ``2 * B``."""
    vertical = (attention[..., 1:, :] - attention[..., :-1, :]).pow(2).sum()
    horizontal = (attention[..., :, 1:] - attention[..., :, :-1]).pow(2).sum()
    border = (
        attention[..., 0, :].pow(2).sum()
        + attention[..., -1, :].pow(2).sum()
        + attention[..., :, 0].pow(2).sum()
        + attention[..., :, -1].pow(2).sum()
    )
    return (vertical + horizontal + border_weight * border) / (2 * batch_size)


def select_maps(
    attention: Tensor, labels: Tensor, selection: MapSelection, map_labels: Tensor | None = None
) -> Tensor:
    """Maps the regularisers see, from all-class maps ``(B, K, h, w)`` and labels ``(B,)``.

    ``"own"``: each image's own class, ``(B, h, w)``. ``"batch"`` (the official code's behaviour):
    for every image, the maps of every label in ``map_labels`` ``(N,)`` (default ``labels``; under
    DDP the labels of the global batch), ``(B, N, h, w)``.
    """
    if selection == "own":
        return attention[torch.arange(len(labels), device=labels.device), labels]
    if selection == "batch":
        return attention[:, labels if map_labels is None else map_labels.to(labels.device)]
    raise ValueError(f"map selection must be 'batch' or 'own', got {selection!r}")


class LCAMLoss(nn.Module):
    """Weighted sum of cross-entropy, area and total-variation terms.

    Args:
        ce_weight, area_weight, tv_weight: term weights (paper: 1.5, 2, 0.01).
        area_exponent: exponent of the area term (0.3).
        border_weight: weight of the border term inside TV (0.3).
        selection: which maps the regularisers see, ``"batch"`` (official) or ``"own"``.
    """

    def __init__(
        self,
        ce_weight: float = 1.5,
        area_weight: float = 2.0,
        tv_weight: float = 0.01,
        area_exponent: float = 0.3,
        border_weight: float = 0.3,
        selection: MapSelection = "batch",
    ) -> None:
        super().__init__()
        if selection not in ("batch", "own"):
            raise ValueError(f"map selection must be 'batch' or 'own', got {selection!r}")
        self.ce_weight, self.area_weight, self.tv_weight = ce_weight, area_weight, tv_weight
        self.area_exponent, self.border_weight = area_exponent, border_weight
        self.selection = selection

    def trained_on(self, masks_image: bool) -> frozenset[str]:
        """The comparison columns this loss optimises, given whether the head's training forward
        masks the image (``masks_image``: L-CAM-Img and TAME) or the features (L-CAM-Fm).

        - The cross-entropy term (``ce_weight > 0``) on an image masked by the upsampled map is
          AD/IC at 100 % in all but name: both ask how much of the class's probability survives
          the image multiplied by the whole map (the metric's map is min-max normalised, the
          loss's a sigmoid; the same pixels carry the same order of weight), so ``ad@100`` and
          ``ic@100``. Masking the features at the target layer (L-CAM-Fm) shows the network no
          masked image: every layer before the target still sees every pixel, and no column
          perturbs features, so nothing.
        - The area term (``area_weight > 0``) is a concave power ``(A + 0.0005) ** 0.3`` of the
          map: a sparsity penalty, which the ``sparseness`` column (Gini index) scores.
        - The total-variation term smooths the map; no column scores smoothness.
        """
        columns: set[str] = set()
        if self.ce_weight > 0 and masks_image:
            columns |= {f"ad@{fraction_key(1.0)}", f"ic@{fraction_key(1.0)}"}
        if self.area_weight > 0:
            columns.add("sparseness")
        return frozenset(columns)

    def forward(
        self,
        masked_logits: Tensor,
        labels: Tensor,
        attention: Tensor,
        map_labels: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Loss terms from masked logits ``(B, K)``, labels ``(B,)`` and maps ``(B, K, h, w)``.

        ``map_labels`` ``(N,)``: the labels whose maps ``"batch"`` selection regularises
        (default ``labels``; pass the global batch's labels under DDP).

        Returns:
            ``{"loss", "ce", "area", "tv"}``, scalars; ``loss`` is the weighted sum.
        """
        selected = select_maps(attention, labels, self.selection, map_labels)
        terms = {
            "ce": F.cross_entropy(masked_logits, labels),
            "area": area_loss(selected, self.area_exponent),
            "tv": total_variation_loss(selected, len(labels), self.border_weight),
        }
        terms["loss"] = (
            self.ce_weight * terms["ce"]
            + self.area_weight * terms["area"]
            + self.tv_weight * terms["tv"]
        )
        return terms
