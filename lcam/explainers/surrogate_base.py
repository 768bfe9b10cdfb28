"""What LIME and KernelSHAP share: superpixels, samples, scoring and the constructor.

Both split each image into ``M`` superpixels (scikit-image quickshift or SLIC, run per image on
the CPU; the label maps then live on the backbone's device), draw ``S`` binary samples
``z in {0, 1}^M`` (``z_j = 1``: superpixel ``j`` shown, ``0``: filled with a colour or a blurred
copy of the image), evaluate the class probability ``f(z)`` of every sample with batched forward
passes, and fit a weighted linear model ``f(z) ~ phi_0 + sum_j phi_j z_j``. The map paints each
superpixel with its coefficient ``phi_j`` (signed; the explainer base min-max normalises).

* **LIME** (Ribeiro et al., KDD 2016): uniform random samples, weights from an exponential kernel
  on the cosine distance to the all-on sample, ridge fit with a free intercept.
* **KernelSHAP** (Lundberg & Lee, NeurIPS 2017): Shapley-kernel weights, ``phi_0 = f(all off)``
  and the efficiency constraint ``sum_j phi_j = f(all on) - f(all off)`` imposed exactly.

Samples are stored as ``(B, S, M)`` boolean tensors (``M`` = the largest superpixel count of the
batch; columns beyond an image's own count are always off and get coefficient 0); pixel masks
are built chunk by chunk by gathering the samples through the label maps, and each chunk of
perturbed images is written straight into a channels-last batch on the CPU (the faster layout
for CPU convolutions; see :func:`~lcam.explainers.sampling.perturbed_batch`).
"""

from __future__ import annotations

import inspect
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from lcam.backbone import FrozenBackbone
from lcam.explainers.base import Explainer, Targets, resolve_targets
from lcam.explainers.sampling import (
    SEGMENTATION_DEFAULTS,
    SegmentationFn,
    class_scores,
    evaluate_pairs,
    fill_tensor,
    make_generator,
    perturbed_batch,
    segment_superpixels,
)
from lcam.maps import gaussian_blur

__all__ = ["SuperpixelSurrogate", "SurrogateFit"]


@dataclass
class SurrogateFit:
    """A fitted surrogate for a batch of ``B`` images (``M`` = largest superpixel count).

    Attributes:
        labels: ``(B, H, W)`` int64 superpixel index of each pixel (``0..M_b - 1``).
        num_superpixels: ``(B,)`` int64 ``M_b``.
        coefficients: ``(B, M)`` ``phi_j`` (0 for ``j >= M_b``).
        intercept: ``(B,)`` ``phi_0``.
        samples: ``(B, S, M)`` bool, ``True`` = superpixel shown.
        scores: ``(B, S)`` class probability of each sample.
        logits: ``(B, K)`` clean logits.
        targets: ``(B,)`` explained classes.
    """

    labels: Tensor
    num_superpixels: Tensor
    coefficients: Tensor
    intercept: Tensor
    samples: Tensor
    scores: Tensor
    logits: Tensor
    targets: Tensor


class SuperpixelSurrogate(Explainer):
    """Shared machinery of LIME and KernelSHAP (see the module docstring).

    Subclasses define the sampling (:meth:`draw_samples`) and the fit (:meth:`solve`).

    Passes per image: ``num_samples`` forwards (the first sample shows every superpixel, i.e. it
    is the clean image, whose score comes from the clean pass), no backward.

    Args:
        backbone: the frozen classifier.
        num_samples: ``S``, samples per image (including the all-on sample).
        segmentation: ``"quickshift"``, ``"slic"`` or a function ``(H, W, 3) float image in [0,1]
            -> (H, W) int labels``. Runs per image on the CPU (the one CPU step).
        segmentation_options: keyword arguments of the scikit-image function, merged over the
            defaults (quickshift: lime's ``kernel_size=4, max_dist=200, ratio=0.2``; slic:
            ``n_segments=50, compactness=10, start_label=0``).
        fill: what hidden superpixels show: an RGB colour in [0, 1] (default black) or
            ``"blur"`` (the image blurred by :func:`lcam.maps.gaussian_blur`, std ``blur_sigma``
            pixels, reflected borders).
        blur_sigma: standard deviation of the blur in pixels.
        ridge: ``lambda`` of :func:`weighted_ridge` (on sample weights normalised to sum 1).
        batch_size: perturbed images per forward pass.
        seed: seed of the samples (same seed, same map); ``None`` draws fresh samples.
    """

    backward_passes = 0.0
    min_samples: ClassVar[int] = 2

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A method's ``__init__(self, backbone, *args, <own options>, **options)`` passes the
        shared options on; its signature is rewritten to list them, so introspection
        (``help``, ``inspect.signature``, the benchmarks' option tables) sees every option."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        own = inspect.signature(init).parameters.values()
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own):
            return
        shared = list(inspect.signature(SuperpixelSurrogate.__init__).parameters.values())
        extra = [p for p in own if p.kind is inspect.Parameter.KEYWORD_ONLY]
        init.__signature__ = inspect.Signature(shared + extra)  # type: ignore[attr-defined]

    def __init__(
        self,
        backbone: FrozenBackbone,
        num_samples: int = 1000,
        segmentation: Literal["quickshift", "slic"] | SegmentationFn = "quickshift",
        segmentation_options: Mapping[str, Any] | None = None,
        fill: Sequence[float] | Literal["blur"] = (0.0, 0.0, 0.0),
        blur_sigma: float = 5.0,
        ridge: float = 1e-5,
        batch_size: int = 64,
        seed: int | None = 0,
    ) -> None:
        super().__init__(backbone)
        if num_samples < self.min_samples:
            raise ValueError(f"num_samples must be >= {self.min_samples}, got {num_samples}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if callable(segmentation):
            if segmentation_options:
                raise ValueError("segmentation_options apply to 'quickshift' and 'slic' only")
        elif segmentation not in SEGMENTATION_DEFAULTS:
            raise ValueError(
                f"segmentation must be 'quickshift', 'slic' or a function, got {segmentation!r}"
            )
        if isinstance(fill, str):
            if fill != "blur":
                raise ValueError(f"fill must be an RGB colour or 'blur', got {fill!r}")
        else:
            fill_tensor(fill, torch.device("cpu"))  # validate
        if blur_sigma <= 0 or ridge < 0:
            raise ValueError("blur_sigma must be > 0 and ridge >= 0")
        self.num_samples, self.segmentation = num_samples, segmentation
        self.segmentation_options = dict(segmentation_options or {})
        self.fill, self.blur_sigma, self.ridge = fill, blur_sigma, ridge
        self.batch_size, self.seed = batch_size, seed
        self.forward_passes = float(num_samples)
        self.superpixel_counts: Tensor | None = None  # (B,) of the last fit, for the warning

    def segment(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Superpixels of ``(B, 3, H, W)`` images: labels ``(B, H, W)`` int64 (``0..M_b - 1``)
        and counts ``(B,)`` on the device (see :func:`segment_superpixels`)."""
        labels, counts = segment_superpixels(images, self.segmentation, self.segmentation_options)
        return labels.to(self.device), counts.to(self.device)

    def fill_images(self, images: Tensor) -> Tensor:
        """What hidden pixels show: ``(B, 3, H, W)`` (colour broadcast, or the blurred images)."""
        if self.fill == "blur":
            return gaussian_blur(images, self.blur_sigma)
        return fill_tensor(self.fill, images.device).to(images.dtype).expand_as(images)

    def draw_samples(self, counts: Tensor, generator: torch.Generator) -> Tensor:
        """``(B, S, M)`` bool samples: each shown superpixel on with probability 1/2 (as lime),
        the first sample all on; columns ``>= M_b`` off. Drawn on the CPU."""
        counts = counts.cpu()
        width = int(counts.max())
        samples = torch.rand((len(counts), self.num_samples, width), generator=generator) < 0.5
        samples[:, 0] = True
        return samples & (torch.arange(width) < counts[:, None])[:, None, :]

    @abstractmethod
    def solve(self, samples: Tensor, scores: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
        """Coefficients ``(B, M)`` and intercepts ``(B,)`` from samples ``(B, S, M)``, scores
        ``(B, S)`` and superpixel counts ``(B,)``."""

    @torch.no_grad()
    def fit(self, images: Tensor, targets: Targets = None) -> SurrogateFit:
        """Segment, sample, evaluate and fit the surrogate of ``(B, 3, H, W)`` images."""
        images = images.to(self.device)
        logits = self.backbone(images)
        resolved = resolve_targets(logits, targets)
        labels, counts = self.segment(images)
        samples = self.draw_samples(counts, make_generator(self.seed)).to(self.device)
        filled = self.fill_images(images)

        def evaluate(image_idx: Tensor, sample_idx: Tensor) -> Tensor:
            # (n, M) samples of the chunk -> (n, 1, H, W) pixel masks through the label maps
            shown = samples[image_idx, sample_idx + 1]
            keep = shown.gather(1, labels[image_idx].flatten(1)).view(-1, 1, *labels.shape[1:])
            inputs = perturbed_batch(len(image_idx), images)
            torch.where(keep, images[image_idx], filled[image_idx], out=inputs)
            return class_scores(self.backbone(inputs), resolved[image_idx])

        rest = evaluate_pairs(
            len(images), self.num_samples - 1, self.batch_size, evaluate, images.device
        )
        scores = torch.cat([class_scores(logits, resolved)[:, None], rest], dim=1)
        coefficients, intercept = self.solve(samples, scores, counts)
        self.forward_passes = float(self.num_samples)
        self.superpixel_counts = counts
        return SurrogateFit(
            labels, counts, coefficients, intercept, samples, scores, logits, resolved
        )

    def degenerate_cause(self, maps: Tensor) -> str:
        """One superpixel gives one coefficient, i.e. a constant map."""
        counts = self.superpixel_counts
        if counts is not None and bool((counts < 2).any()):
            single = (counts < 2).nonzero().flatten().tolist()
            return (
                f"the segmentation gave image(s) {single} a single superpixel, so the surrogate "
                "has one coefficient; use smaller segments (segmentation_options, e.g. a smaller "
                "kernel_size/max_dist for quickshift or more n_segments for slic)"
            )
        return super().degenerate_cause(maps)

    def compute_maps(self, images: Tensor, targets: Targets) -> tuple[Tensor, Tensor, Tensor]:
        fit = self.fit(images, targets)
        maps = fit.coefficients.gather(1, fit.labels.flatten(1)).view_as(fit.labels)
        return maps.float(), fit.logits, fit.targets
