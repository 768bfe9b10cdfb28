"""Perturbation explainers: RISE and occlusion sensitivity.

Both explain a class ``c`` by masking the ``[0, 1]`` input, running the frozen network on the
masked copies in batches and weighting each mask by the class score it leaves:

* **RISE** (Petsiuk et al., 2018): ``N`` random smooth masks; the map is the score-weighted mean
  of the masks.
* **Occlusion** (Zeiler & Fergus, 2014): a patch slides over the image; the map is the drop of
  the class score caused by hiding each pixel, averaged over the patches that hide it.

The helpers they share with the other perturbation explainers live in
:mod:`lcam.explainers.sampling` (re-exported here for the old import path).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lcam.backbone import FrozenBackbone
from lcam.explainers.base import Explainer, Targets, resolve_targets
from lcam.explainers.registry import register_explainer
from lcam.explainers.sampling import (
    ScoreKind,
    check_positive,
    class_scores,
    draw_rise_grids,
    evaluate_pairs,
    fill_tensor,
    make_generator,
    pair,
    perturbed_batch,
    rise_masks,
)

__all__ = [
    "RISE",
    "Occlusion",
    "ScoreKind",
    "class_scores",
    "evaluate_pairs",
    "fill_tensor",
    "make_generator",
    "perturbed_batch",
]


@register_explainer("rise")
class RISE(Explainer):
    r"""Randomized Input Sampling for Explanation (Petsiuk et al., BMVC 2018).

    For ``i = 1..N`` a binary ``s x s`` grid ``g_i`` with cells kept with probability ``p`` is
    upsampled bilinearly to ``((s + 1) * ceil(H / s), (s + 1) * ceil(W / s))`` and cropped to
    ``H x W`` at a random shift in ``[0, ceil(H / s)) x [0, ceil(W / s))``, giving a smooth mask
    ``M_i`` in ``[0, 1]``. With ``f_c`` the class score of the masked image ``x * M_i``,

    .. math::
        S_c = \frac{1}{N p} \sum_{i=1}^{N} f_c(x \odot M_i)\, M_i

    (the Monte-Carlo estimate of ``E[f_c(x * M) | M(pixel) = 1]``). The low-resolution grids and
    shifts are drawn once per call from a local generator; the full-resolution masks are built
    chunk by chunk, so memory stays ``O(batch_size * H * W)`` for any ``N``. The same masks serve
    every image of the batch.

    Passes per image: ``N + 1`` forwards (the masked images plus the clean pass that gives the
    logits and the predicted class), no backward.

    Args:
        backbone: the frozen classifier.
        num_masks: ``N`` (the papers use 4000 for VGG-16, 8000 for ResNet-50).
        s: grid size ``s`` (the mask has ``s x s`` cells).
        p: probability of keeping a cell.
        score: ``"probability"`` (softmax probability of ``c``, as in RISE) or ``"logit"``.
        batch_size: masked images per forward pass.
        seed: seed of the masks (same seed, same map); ``None`` draws fresh masks every call.
    """

    backward_passes = 0.0

    def __init__(
        self,
        backbone: FrozenBackbone,
        num_masks: int = 4000,
        s: int = 7,
        p: float = 0.5,
        score: ScoreKind = "probability",
        batch_size: int = 64,
        seed: int | None = 0,
    ) -> None:
        super().__init__(backbone)
        check_positive(num_masks=num_masks, s=s, batch_size=batch_size)
        if not 0.0 < p <= 1.0:
            raise ValueError(f"p must be in (0, 1], got {p}")
        class_scores(torch.zeros(1, 1), torch.zeros(1, dtype=torch.long), score)  # validate
        self.num_masks, self.s, self.p = num_masks, s, p
        self.score, self.batch_size, self.seed = score, batch_size, seed
        self.forward_passes = float(num_masks + 1)

    def draw(self, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """The low-resolution randomness of one call: grids ``(N, s, s)`` bool, shifts ``(N, 2)``.

        Drawn on the CPU from a generator seeded with :attr:`seed`, then moved to the device.
        """
        generator = make_generator(self.seed)
        grids, shifts = draw_rise_grids(self.num_masks, self.s, self.p, size, generator)
        return grids.to(self.device), shifts.to(self.device)

    def masks(self, size: tuple[int, int]) -> Tensor:
        """All ``N`` masks ``(N, H, W)`` of one call at once (for inspection; memory ``N*H*W``)."""
        return rise_masks(*self.draw(size), size)

    @torch.no_grad()
    def compute_maps(self, images: Tensor, targets: Targets) -> tuple[Tensor, Tensor, Tensor]:
        logits = self.backbone(images)
        resolved = resolve_targets(logits, targets)
        batch, size = len(images), (images.shape[-2], images.shape[-1])
        grids, shifts = self.draw(size)
        saliency = torch.zeros(batch, *size, device=images.device)
        chunk = max(1, self.batch_size // batch)  # masks per chunk: one forward when B <= bs
        for start in range(0, self.num_masks, chunk):
            masks = rise_masks(grids[start : start + chunk], shifts[start : start + chunk], size)

            def evaluate(image_idx: Tensor, mask_idx: Tensor, masks: Tensor = masks) -> Tensor:
                inputs = perturbed_batch(len(image_idx), images)
                torch.mul(images[image_idx], masks[mask_idx, None].to(images.dtype), out=inputs)
                return class_scores(self.backbone(inputs), resolved[image_idx], self.score)

            scores = evaluate_pairs(batch, len(masks), self.batch_size, evaluate, images.device)
            saliency += torch.einsum("bn,nhw->bhw", scores, masks)
        self.forward_passes = float(self.num_masks + 1)
        return saliency / (self.num_masks * self.p), logits, resolved


@register_explainer("occlusion")
class Occlusion(Explainer):
    r"""Occlusion sensitivity (Zeiler & Fergus, ECCV 2014).

    A ``ph x pw`` patch filled with ``fill`` is placed at every position ``(t, l)`` of a grid with
    steps ``stride`` (the last row/column of positions is moved flush with the border so that
    every pixel is covered). With ``f_c`` the class score and ``P_{t,l}`` the patch's indicator,

    .. math::
        S_c(u) = \frac{\sum_{t,l} [f_c(x) - f_c(x_{t,l})] \, P_{t,l}(u)}{\sum_{t,l} P_{t,l}(u)},
        \qquad x_{t,l} = x \odot (1 - P_{t,l}) + \text{fill} \cdot P_{t,l},

    i.e. the score drop averaged over the patches hiding pixel ``u`` (positive = the pixel
    supports the class). The score is the softmax probability of ``c`` by default (``"logit"``
    uses the pre-softmax logit). All positions of all images are batched.

    Passes per image: ``T * L + 1`` forwards (``T x L`` patch positions plus the clean pass),
    set after each call since it depends on the image size; no backward.

    Args:
        backbone: the frozen classifier.
        patch_size: patch side, or ``(ph, pw)``.
        stride: step between patch positions, or ``(sh, sw)``.
        fill: grey level or RGB colour in [0, 1] of the patch (``0`` = black).
        score: ``"probability"`` or ``"logit"``.
        batch_size: occluded images per forward pass.
    """

    backward_passes = 0.0

    def __init__(
        self,
        backbone: FrozenBackbone,
        patch_size: int | Sequence[int] = 16,
        stride: int | Sequence[int] = 8,
        fill: float | Sequence[float] = 0.0,
        score: ScoreKind = "probability",
        batch_size: int = 64,
    ) -> None:
        super().__init__(backbone)
        self.patch_size = pair(patch_size, "patch_size")
        self.stride = pair(stride, "stride")
        check_positive(batch_size=batch_size)
        fill_tensor(fill, torch.device("cpu"))  # validate
        class_scores(torch.zeros(1, 1), torch.zeros(1, dtype=torch.long), score)  # validate
        self.fill, self.score, self.batch_size = fill, score, batch_size

    @staticmethod
    def _windows(length: int, patch: int, step: int, device: torch.device) -> Tensor:
        """Indicator ``(T, length)`` bool of the patch positions along one axis."""
        if patch > length:
            raise ValueError(f"patch size {patch} exceeds the image side {length}")
        starts = list(range(0, length - patch + 1, step))
        if starts[-1] != length - patch:
            starts.append(length - patch)
        start = torch.tensor(starts, device=device)[:, None]
        position = torch.arange(length, device=device)
        return (position >= start) & (position < start + patch)

    def windows(self, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Row windows ``(T, H)`` and column windows ``(L, W)``; patch ``(t, l)`` is their outer
        product."""
        rows = self._windows(size[0], self.patch_size[0], self.stride[0], self.device)
        cols = self._windows(size[1], self.patch_size[1], self.stride[1], self.device)
        return rows, cols

    @torch.no_grad()
    def compute_maps(self, images: Tensor, targets: Targets) -> tuple[Tensor, Tensor, Tensor]:
        logits = self.backbone(images)
        resolved = resolve_targets(logits, targets)
        rows, cols = self.windows((images.shape[-2], images.shape[-1]))
        num_cols = len(cols)
        fill = fill_tensor(self.fill, images.device).to(images.dtype)

        def evaluate(image_idx: Tensor, position: Tensor) -> Tensor:
            inside = rows[position // num_cols, :, None] & cols[position % num_cols, None, :]
            inputs = perturbed_batch(len(image_idx), images)
            torch.where(inside[:, None], fill, images[image_idx], out=inputs)
            return class_scores(self.backbone(inputs), resolved[image_idx], self.score)

        positions = len(rows) * num_cols
        scores = evaluate_pairs(len(images), positions, self.batch_size, evaluate, images.device)
        drop = class_scores(logits, resolved, self.score)[:, None] - scores
        drop = drop.view(len(images), len(rows), num_cols)
        rows_f, cols_f = rows.float(), cols.float()
        total = torch.einsum("btl,th,lw->bhw", drop, rows_f, cols_f)
        coverage = rows_f.sum(0)[:, None] * cols_f.sum(0)[None, :]
        self.forward_passes = float(positions + 1)
        return total / coverage, logits, resolved
