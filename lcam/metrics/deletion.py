"""Deletion and insertion AUC (the causal metrics of the RISE paper)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchvision.transforms.functional import gaussian_blur

from lcam.metrics.common import (
    Model,
    check_batch,
    checked_batch_size,
    pixel_ranks,
    predict_in_chunks,
    prepare_maps,
    resolve_classes,
)

__all__ = ["DeletionInsertion", "trapezoid_auc"]


def trapezoid_auc(curves: Tensor) -> Tensor:
    r"""Area under ``(..., S + 1)`` curves sampled at fractions ``0, 1/S, ..., 1``.

    .. math:: AUC = \frac{1}{S} \Big( \sum_{s=0}^{S} q_s - \frac{q_0 + q_S}{2} \Big)
    """
    steps = curves.shape[-1] - 1
    if steps < 1:
        raise ValueError("a curve needs at least two points")
    return (curves.sum(-1) - 0.5 * (curves[..., 0] + curves[..., -1])) / steps


class DeletionInsertion(Metric):
    r"""Deletion and insertion AUC of the class-probability curve (RISE paper).

    For each image ``x`` (``(3, H, W)`` in [0, 1]) with map ``S`` (min-max normalised, bilinearly
    upsampled to ``H x W``), the pixels are ranked most relevant first (stable sort, ties by flat
    index). With ``n_s = ceil(s * H * W / steps)`` pixels changed at step ``s = 0..steps``:

    - deletion: ``x_s`` = ``x`` with its top ``n_s`` pixels set to black (0), or to those of the
      blurred ``x`` (``deletion_baseline="blur"``);
    - insertion: ``x_s`` = the baseline (``x`` blurred, or black) with its top ``n_s`` pixels
      taken from ``x``.

    ``q_s = softmax(f(x_s))_c`` for the class ``c`` (predicted on the clean image, or the given
    target). The score is the trapezoid area under ``q`` over the fraction axis ``s / steps`` in
    [0, 1] (see :func:`trapezoid_auc`): deletion lower is better, insertion higher is better. The
    mean curves are the states (``(steps + 1,)`` sums), so the mean AUC is the AUC of the mean
    curve and DDP reduction is exact.

    Args:
        model: callable ``(B, 3, H, W)`` images in [0, 1] -> ``(B, K)`` logits, held by reference.
        steps: number of steps ``S`` (the curves have ``S + 1`` points).
        batch_size: maximum number of images per forward pass.
        baseline: start image of insertion: ``"blur"`` (the RISE paper: Gaussian blur of ``x``)
            or ``"black"``.
        deletion_baseline: what deleted pixels become: ``"black"`` (the RISE paper) or ``"blur"``
            (the same Gaussian blur of ``x``).
        blur_kernel_size, blur_sigma: the Gaussian blur (default 11 and 5 pixels as in RISE;
            reflect padding at the borders).
        return_curves: also return the mean curves under ``"deletion_curve"`` and
            ``"insertion_curve"`` (their x axis is :attr:`fractions`).

    ``update(images, maps, targets=None)``: images ``(B, 3, H, W)`` in [0, 1], maps ``(B, h, w)``
    raw maps, targets ``(B,)`` optional (default: the predicted class).

    ``compute()`` returns ``{"deletion_auc": ..., "insertion_auc": ...}`` (probabilities in
    [0, 1]), plus the curves when asked.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    deletion_sum: Tensor
    insertion_sum: Tensor
    count: Tensor

    def __init__(
        self,
        model: Model,
        steps: int = 100,
        batch_size: int = 64,
        baseline: str = "blur",
        blur_kernel_size: int = 11,
        blur_sigma: float = 5.0,
        return_curves: bool = False,
        deletion_baseline: str = "black",
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if baseline not in ("blur", "black"):
            raise ValueError(f"baseline must be 'blur' or 'black', got {baseline!r}")
        if deletion_baseline not in ("blur", "black"):
            raise ValueError(
                f"deletion_baseline must be 'blur' or 'black', got {deletion_baseline!r}"
            )
        if blur_kernel_size < 1 or blur_kernel_size % 2 == 0:
            raise ValueError(f"blur_kernel_size must be odd and positive, got {blur_kernel_size}")
        self.__dict__["model"] = model  # a reference only: not part of the metric's state_dict
        self.steps = steps
        self.batch_size = checked_batch_size(batch_size)
        self.baseline = baseline
        self.deletion_baseline = deletion_baseline
        self.blur_kernel_size = blur_kernel_size
        self.blur_sigma = float(blur_sigma)
        self.return_curves = return_curves
        self.add_state("deletion_sum", torch.zeros(steps + 1), dist_reduce_fx="sum")
        self.add_state("insertion_sum", torch.zeros(steps + 1), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")

    @property
    def fractions(self) -> Tensor:
        """``(steps + 1,)`` x axis of the curves: the changed share ``s / steps`` of pixels."""
        return torch.linspace(0.0, 1.0, self.steps + 1)

    def insertion_start(self, images: Tensor) -> Tensor:
        """The insertion baseline of ``(B, 3, H, W)`` images (blurred or black), same shape."""
        return self._baseline_images(images, self.baseline)

    def _baseline_images(self, images: Tensor, kind: str) -> Tensor:
        """``(B, 3, H, W)`` black images or the Gaussian blur of ``images``."""
        if kind == "black":
            return torch.zeros_like(images)
        return gaussian_blur(images, [self.blur_kernel_size] * 2, [self.blur_sigma] * 2)

    def curves(
        self, images: Tensor, maps: Tensor, targets: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Per-image deletion and insertion curves, each ``(B, steps + 1)``."""
        check_batch(images, maps, targets)
        batch, _, height, width = images.shape
        device = images.device
        points = self.steps + 1
        classes = resolve_classes(self.model, images, targets, self.batch_size)
        ranks = pixel_ranks(prepare_maps(maps.to(device), (height, width))).view(
            batch, 1, height, width
        )
        # n_s = ceil(s * HW / steps), exact in integers.
        changed = (torch.arange(points, device=device) * height * width + self.steps - 1) // (
            self.steps
        )
        start = self.insertion_start(images)
        same = self.deletion_baseline == self.baseline
        removed = start if same else self._baseline_images(images, self.deletion_baseline)

        def class_probability(logits: Tensor, index: Tensor) -> Tensor:
            return logits.softmax(dim=1).gather(1, classes[index % batch, None])[:, 0]

        def deleted(index: Tensor) -> Tensor:  # index = step * B + image
            top = ranks[index % batch] < changed[index // batch].view(-1, 1, 1, 1)
            return torch.where(top, removed[index % batch], images[index % batch])

        def inserted(index: Tensor) -> Tensor:
            top = ranks[index % batch] < changed[index // batch].view(-1, 1, 1, 1)
            return torch.where(top, images[index % batch], start[index % batch])

        total = points * batch
        deletion = predict_in_chunks(
            self.model, deleted, total, self.batch_size, class_probability, device
        )
        insertion = predict_in_chunks(
            self.model, inserted, total, self.batch_size, class_probability, device
        )
        return deletion.view(points, batch).T, insertion.view(points, batch).T

    def update(self, images: Tensor, maps: Tensor, targets: Tensor | None = None) -> None:
        """Accumulate the deletion and insertion curves of a batch."""
        deletion, insertion = self.curves(images, maps, targets)
        self.deletion_sum += deletion.sum(dim=0).to(self.deletion_sum)
        self.insertion_sum += insertion.sum(dim=0).to(self.insertion_sum)
        self.count += images.shape[0]

    def compute(self) -> dict[str, Tensor]:
        """Mean deletion/insertion AUC (and mean curves if ``return_curves``)."""
        count = self.count.clamp_min(1)
        deletion, insertion = self.deletion_sum / count, self.insertion_sum / count
        result = {
            "deletion_auc": trapezoid_auc(deletion),
            "insertion_auc": trapezoid_auc(insertion),
        }
        if self.return_curves:
            result["deletion_curve"] = deletion
            result["insertion_curve"] = insertion
        return result
