r"""The amortized masked-response objective: a class map that predicts the answers to masks.

RISE, LIME and KernelSHAP explain one image by asking the frozen model hundreds of questions
("what is the class score when only these regions are kept?") and fitting a linear model of the
answers over the regions. This objective asks those questions at *training* time and teaches a
one-pass head to answer them itself (the amortization of FastSHAP, Jethani et al., ICLR 2022).

For images ``x`` ``(B, 3, H, W)`` in [0, 1], explained classes ``c`` ``(B,)`` and the head's raw
map ``S`` ``(B, h, w)`` of class ``c_b`` at the map's own resolution:

1. draw ``M`` random masks ``m_{b,i}`` ``(H, W)`` in [0, 1] per image (see ``masks`` below);
2. score every masked image with the frozen model, in one no-grad batched pass chunked to
   ``chunk_size`` images (``B * M`` forwards per step, masked pixels black as in RISE/L-CAM):
   ``r_{b,i} = f_c(x_b * m_{b,i})`` (softmax probability or logit of ``c_b``), ``(B, M)``;
3. average each mask over the map's cells, ``d_{b,i} = area_pool(m_{b,i}) `` ``(h, w)``, and let
   the map predict the responses linearly, ``z_{b,i} = <S_b, d_{b,i}> = sum_{u,v} S_b[u,v]
   d_{b,i}[u,v]`` ``(B, M)``;
4. ``fit="intercept"`` (least squares with a per-image intercept solved in closed form, so only the
   map is learned; ``S`` is in response units per map cell):

   .. math::
       L = \frac{\sum_b \min_{\beta_b} \sum_i w_{b,i} (r_{b,i} - \beta_b - z_{b,i})^2}
                {\sum_b \sum_i w_{b,i} (r_{b,i} - \bar r_b)^2 + \epsilon}
         = \frac{\sum_b \mathrm{Var}_w(r_b - z_b)}{\sum_b \mathrm{Var}_w(r_b) + \epsilon}

   (``beta_b = mean_w(r_b - z_b)``; dividing by the responses' own spread, a constant, makes 1
   "explains nothing" and 0 "explains every mask", on any backbone and score);
   ``fit="correlation"``: ``L = mean_b (1 - rho_w(z_b, r_b))`` with ``rho_w`` the weighted Pearson
   correlation and ``z`` computed from the map minus its spatial mean: the least-squares fit with
   a free positive scale as well, invariant to the map's positive scale and offset (as the
   min-max normalised maps that are evaluated), so it can act on the same raw L-CAM/TAME logit
   maps that the area and TV terms push negative.

   ``w_{b,i}`` are normalised per image; they are uniform here because the Shapley kernel enters
   through the sampling (``sampling="shapley"``, as FastSHAP does), where the importance ratio
   ``kernel / proposal`` is constant.

Masks (``masks``):

* ``"rise"``: a binary ``grid x grid`` pattern, cells kept with probability ``keep_prob``,
  upsampled bilinearly so that one cell spans ``H / grid`` pixels of a canvas ``(grid + 1)`` cells
  wide and cropped at a random sub-cell shift (RISE, Petsiuk et al. 2018): smooth masks.
* ``"cells"``: player subsets. The players are the cells of a ``grid x grid`` partition of the
  image, or superpixel labels ``(B, H, W)`` passed as ``segments``; a sample keeps a subset
  of the players, drawn uniformly (each kept with ``keep_prob``, ``sampling="uniform"``) or from
  the Shapley kernel (``sampling="shapley"``: size ``k`` with probability proportional to
  ``1 / (k (P - k))``, ``0 < k < P``, then a uniform subset of that size). With the Shapley
  sampling and ``fit="intercept"``, the map summed per player is fitted by the Shapley-kernel
  weighted least squares of KernelSHAP (Lundberg & Lee 2017) and FastSHAP, which gives the exact
  Shapley values under the efficiency constraint ``sum_j phi_j = f(all) - f(none)``; that
  constraint is not imposed here (the intercept is free), so the fit approximates them.

Cost: ``M`` extra forward passes of the frozen network per training image and step, no backward
through the network (the loss's gradient reaches ``S`` through ``z`` only); inference stays one
pass. Random draws use the global torch RNG on the CPU (or ``generator``), so a seed gives the same
masks on every device.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lcam.backbone import FrozenBackbone
from lcam.explainers.perturbation import ScoreKind, class_scores

__all__ = ["MaskSamples", "MaskedResponseLoss", "masked_response_fit"]

MaskKind = Literal["rise", "cells"]
Sampling = Literal["uniform", "shapley"]
Fit = Literal["intercept", "correlation"]


class MaskSamples:
    """The questions of one step and the model's answers.

    Attributes:
        pooled: ``(B, M, h, w)`` masks averaged over the map's cells (``d`` above).
        responses: ``(B, M)`` class scores of the masked images (``r``).
        weights: ``(B, M)`` regression weights, summing to 1 per image.
    """

    def __init__(self, pooled: Tensor, responses: Tensor, weights: Tensor) -> None:
        self.pooled, self.responses, self.weights = pooled, responses, weights


def masked_response_fit(
    maps: Tensor, samples: MaskSamples, fit: Fit = "intercept", eps: float = 1e-8
) -> Tensor:
    """The loss of step 4 (module docstring) for raw maps ``(B, h, w)``: a scalar.

    Differentiable in ``maps`` only; ``samples`` carry no gradient.
    """
    if maps.shape != samples.pooled.shape[:1] + samples.pooled.shape[2:]:
        raise ValueError(
            f"maps of shape {tuple(maps.shape)} do not match masks pooled to "
            f"{tuple(samples.pooled.shape[2:])} for {samples.pooled.shape[0]} images"
        )
    maps = maps.float()
    if fit == "correlation":  # offset invariance: a constant map predicts nothing
        maps = maps - maps.mean(dim=(1, 2), keepdim=True)
    z = torch.einsum("bhw,bmhw->bm", maps, samples.pooled)
    r, w = samples.responses, samples.weights

    def centred(values: Tensor) -> Tensor:
        return values - (w * values).sum(1, keepdim=True)

    r_c = centred(r)
    spread = (w * r_c**2).sum(1)
    if fit == "intercept":
        residual = centred(r - z)
        # Ratio of batch sums, not a mean of ratios: with few masks an image's responses can be
        # all but equal (every mask hides the object), and its own ratio would be noise.
        return (w * residual**2).sum() / (spread.sum() + eps)
    if fit == "correlation":
        z_c = centred(z)
        covariance = (w * z_c * r_c).sum(1)
        rho = covariance / ((w * z_c**2).sum(1) * spread + eps).sqrt()
        return (1 - rho).mean()
    raise ValueError(f"fit must be 'intercept' or 'correlation', got {fit!r}")


class MaskedResponseLoss(nn.Module):
    """The amortized masked-response objective (see the module docstring for the formula).

    Usage: ``loss = objective(raw_maps, images, targets, backbone)`` with ``raw_maps``
    ``(B, h, w)`` the head's maps of the explained classes; the caller adds
    ``weight * loss`` to its own terms (L-CAM's CE/area/TV, distillation).

    Args:
        masks_per_image: ``M``, masked forwards per image and step (the cost knob).
        masks: ``"rise"`` (smooth random grids) or ``"cells"`` (player subsets).
        grid: cells per side of the RISE pattern or of the player partition.
        keep_prob: probability of keeping a cell (``"rise"``, ``"cells"`` with uniform sampling).
        sampling: ``"uniform"`` or ``"shapley"`` (``"cells"`` only).
        score: ``"probability"`` (softmax of the class) or ``"logit"``.
        fit: ``"intercept"`` or ``"correlation"``.
        chunk_size: masked images per forward pass (bounds memory to ``chunk_size * 3 * H * W``).
    """

    def __init__(
        self,
        masks_per_image: int = 16,
        masks: MaskKind = "rise",
        grid: int = 7,
        keep_prob: float = 0.5,
        sampling: Sampling = "uniform",
        score: ScoreKind = "probability",
        fit: Fit = "intercept",
        chunk_size: int = 256,
    ) -> None:
        super().__init__()
        if masks_per_image < 2 or grid < 1 or chunk_size < 1:
            raise ValueError("masks_per_image must be >= 2, grid and chunk_size >= 1")
        if masks not in ("rise", "cells"):
            raise ValueError(f"masks must be 'rise' or 'cells', got {masks!r}")
        if sampling not in ("uniform", "shapley"):
            raise ValueError(f"sampling must be 'uniform' or 'shapley', got {sampling!r}")
        if sampling == "shapley" and masks != "cells":
            raise ValueError("sampling='shapley' draws player subsets: use masks='cells'")
        if fit not in ("intercept", "correlation"):
            raise ValueError(f"fit must be 'intercept' or 'correlation', got {fit!r}")
        if not 0.0 < keep_prob < 1.0:
            raise ValueError(f"keep_prob must be in (0, 1), got {keep_prob}")
        class_scores(torch.zeros(1, 1), torch.zeros(1, dtype=torch.long), score)  # validate
        self.masks_per_image, self.masks, self.grid = masks_per_image, masks, grid
        self.keep_prob, self.sampling, self.score = keep_prob, sampling, score
        self.fit, self.chunk_size = fit, chunk_size

    @property
    def trained_on(self) -> frozenset[str]:
        """The comparison columns this term optimises: ``faithfulness_correlation`` and
        ``infidelity``. It fits the map's sum over each random mask to the model's response to
        that mask, the linear relation between map and perturbed responses those two score."""
        return frozenset({"faithfulness_correlation", "infidelity"})

    def forward(
        self,
        maps: Tensor,
        images: Tensor,
        targets: Tensor,
        backbone: FrozenBackbone,
        segments: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The scalar loss of raw maps ``(B, h, w)`` for ``images`` ``(B, 3, H, W)`` in [0, 1]
        and ``targets`` ``(B,)``; ``segments`` ``(B, H, W)`` int64 player labels replace the grid
        cells when ``masks="cells"``."""
        samples = self.sample(images, targets, backbone, maps.shape[-2:], segments, generator)
        return masked_response_fit(maps, samples, self.fit)

    @torch.no_grad()
    def sample(
        self,
        images: Tensor,
        targets: Tensor,
        backbone: FrozenBackbone,
        map_size: tuple[int, int] | torch.Size,
        segments: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> MaskSamples:
        """Steps 1-3: draw ``M`` masks per image, score the ``B * M`` masked images, pool."""
        batch, size = len(images), (images.shape[-2], images.shape[-1])
        count = batch * self.masks_per_image
        if self.masks == "rise":
            grids = torch.rand((count, self.grid, self.grid), generator=generator) < self.keep_prob
            cells = (math.ceil(size[0] / self.grid), math.ceil(size[1] / self.grid))
            shifts = torch.rand((count, 2), generator=generator) * torch.tensor(cells)
            draws = (grids.to(images.device), shifts.to(images.device))
        else:
            labels = self._player_labels(segments, batch, size, images.device)
            players = int(labels.max()) + 1
            draws = (labels, self._coalitions(count, players, generator).to(images.device))
        pooled = images.new_empty((count, *map_size), dtype=torch.float32)
        responses = images.new_empty(count, dtype=torch.float32)
        for start in range(0, count, self.chunk_size):
            pair = torch.arange(start, min(start + self.chunk_size, count), device=images.device)
            image_idx = pair // self.masks_per_image
            masks = self._build_masks(draws, pair, image_idx, size)  # (n, H, W)
            logits = backbone(images[image_idx] * masks[:, None].to(images.dtype))
            responses[pair] = class_scores(logits, targets[image_idx], self.score)
            pooled[pair] = F.adaptive_avg_pool2d(masks[:, None].float(), tuple(map_size))[:, 0]
        weights = torch.full((batch, self.masks_per_image), 1 / self.masks_per_image)
        return MaskSamples(
            pooled.view(batch, self.masks_per_image, *map_size),
            responses.view(batch, self.masks_per_image),
            weights.to(images.device),
        )

    def _build_masks(
        self, draws: tuple[Tensor, Tensor], pair: Tensor, image_idx: Tensor, size: tuple[int, int]
    ) -> Tensor:
        """Masks ``(n, H, W)`` in [0, 1] of the pairs ``pair`` ``(n,)``."""
        if self.masks == "cells":
            labels, coalitions = draws
            kept = coalitions[pair].gather(1, labels[image_idx].flatten(1))
            return kept.view(len(pair), *size).float()
        grids, shifts = draws
        # Output pixel centre p (+ shift, in pixels) lies on a canvas of grid + 1 cells of
        # ceil(side / grid) pixels each, which the bilinear sample stretches over the grid.
        axes = []
        for axis, side in enumerate(size):
            cell = math.ceil(side / self.grid)
            position = torch.arange(side, device=grids.device) + 0.5 + shifts[pair, axis, None]
            axes.append(position / ((self.grid + 1) * cell) * 2 - 1)  # (n, side) in [-1, 1]
        rows, cols = axes
        sampling_grid = torch.stack(
            torch.broadcast_tensors(cols[:, None, :], rows[:, :, None]), dim=-1
        )
        smooth = F.grid_sample(
            grids[pair, None].float(), sampling_grid, align_corners=False, padding_mode="border"
        )
        return smooth[:, 0].clamp_(0, 1)

    def _player_labels(
        self, segments: Tensor | None, batch: int, size: tuple[int, int], device: torch.device
    ) -> Tensor:
        """``(B, H, W)`` int64 player of each pixel: ``segments`` or the ``grid x grid`` cells."""
        if segments is not None:
            if segments.shape != (batch, *size) or segments.dtype != torch.long:
                raise ValueError(
                    f"segments must be int64 labels of shape {(batch, *size)}, got "
                    f"{segments.dtype} {tuple(segments.shape)}"
                )
            if segments.min() < 0:
                raise ValueError("segments must be labels >= 0")
            return segments.to(device)
        rows = torch.arange(size[0], device=device) * self.grid // size[0]
        cols = torch.arange(size[1], device=device) * self.grid // size[1]
        return (rows[:, None] * self.grid + cols[None, :]).expand(batch, *size)

    def _coalitions(self, count: int, players: int, generator: torch.Generator | None) -> Tensor:
        """``(count, P)`` bool kept players, drawn as :attr:`sampling` says (on the CPU)."""
        if self.sampling == "uniform" or players < 2:
            return torch.rand((count, players), generator=generator) < self.keep_prob
        size = torch.arange(1, players, dtype=torch.float64)
        kernel = 1.0 / (size * (players - size))
        sizes = torch.multinomial(kernel, count, replacement=True, generator=generator) + 1
        ranks = torch.rand((count, players), generator=generator).argsort(1).argsort(1)
        return ranks < sizes[:, None]
