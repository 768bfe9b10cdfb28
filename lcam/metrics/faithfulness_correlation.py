r"""Faithfulness correlation (Bhatt et al., IJCAI 2020; Quantus ``FaithfulnessCorrelation``)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from lcam.maps import upsample_maps
from lcam.metrics.common import (
    Model,
    check_batch,
    checked_batch_size,
    predict_in_chunks,
    resolve_classes,
)
from lcam.metrics.correlation import row_pearson

__all__ = ["FaithfulnessCorrelation"]


class FaithfulnessCorrelation(Metric):
    r"""Mean over images of the correlation between a map's mass on random subsets and the
    logit drop when those subsets are blacked out. Higher is better (in [-1, 1]).

    For each image ``x`` ``(3, H, W)``, map ``S`` (resized to ``H x W``, broadcast over the
    colour channels) and ``r = 1..R`` random subsets ``T_r`` of ``k`` of the ``3HW`` channel
    pixels (drawn without replacement),

    .. math:: FC(x) = \mathrm{corr}_r\Big(\sum_{i \in T_r} S_i,\;
              y_c(x) - y_c(x_{T_r \leftarrow b})\Big)

    with ``y_c`` the logit of the explained class and ``b`` the baseline value (0: black).
    This is Quantus's definition (its ``"black"`` baseline is the image's minimum, 0 for
    images that contain black). Subsets come from a CPU generator seeded once at construction;
    the ``R * B`` perturbed images of a batch are predicted together, in chunks of ``B`` images
    (at most ``batch_size``).
    States: the sum of correlations and the image count (exact under DDP).

    Args:
        model: images ``(B, 3, H, W)`` in [0, 1] -> logits ``(B, K)``.
        num_runs: ``R`` (Quantus ``nr_runs``).
        subset_size: ``k`` (Quantus ``subset_size``).
        baseline: the value written into the subset.
        batch_size: most images per forward.
        seed: seed of the subset generator.

    ``update(images, maps, targets=None)``: maps ``(B, h, w)``; targets ``(B,)`` (default: the
    predicted class). ``compute()`` returns the mean correlation.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correlation_sum: Tensor
    count: Tensor

    def __init__(
        self,
        model: Model,
        num_runs: int = 100,
        subset_size: int = 224,
        baseline: float = 0.0,
        batch_size: int = 64,
        seed: int = 0,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        if num_runs < 2 or subset_size < 1:
            raise ValueError("num_runs must be >= 2 and subset_size >= 1")
        self.__dict__["model"] = model  # a reference only: not part of the state_dict
        self.num_runs, self.subset_size, self.baseline = num_runs, subset_size, baseline
        self.batch_size = checked_batch_size(batch_size)
        self.generator = torch.Generator().manual_seed(seed)
        self.add_state("correlation_sum", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")

    def draw_subset(self, run: int, batch: int, features: int) -> Tensor:
        """``(B, k)`` distinct feature indices of run ``run`` (uniform subsets)."""
        scores = torch.rand(batch, features, generator=self.generator)
        return scores.topk(self.subset_size, dim=1, sorted=False).indices

    def update(self, images: Tensor, maps: Tensor, targets: Tensor | None = None) -> None:
        """Accumulate the correlations of a batch (shapes in the class docstring)."""
        check_batch(images, maps, targets)
        batch, channels, height, width = images.shape
        features = channels * height * width
        if self.subset_size >= features:
            raise ValueError(f"subset_size {self.subset_size} >= the {features} channel pixels")
        device = images.device
        maps = upsample_maps(maps.to(device).float(), (height, width))
        attributions = maps[:, None].expand(batch, channels, height, width).flatten(1)

        classes = resolve_classes(self.model, images, targets, self.batch_size)

        def pick(logits: Tensor, index: Tensor) -> Tensor:
            return logits.double().gather(1, classes[index % batch, None])[:, 0]

        subsets = torch.stack(
            [self.draw_subset(run, batch, features) for run in range(self.num_runs)]
        ).to(device)  # (R, B, k)
        mass = attributions[None].expand(self.num_runs, -1, -1).gather(2, subsets)
        mass = mass.double().sum(dim=2).T  # (B, R)
        flat = images.flatten(1)

        def perturbed(index: Tensor) -> Tensor:
            chosen = subsets.flatten(0, 1)[index]  # (n, k), run-major
            return flat[index % batch].scatter(1, chosen, self.baseline).view(-1, *images.shape[1:])

        clean = predict_in_chunks(
            self.model, lambda i: images[i], batch, self.batch_size, pick, device
        )
        # Chunks of the caller's own batch size (at most batch_size), not of batch_size: on a
        # CPU a 64-image forward of the 64 px quickstart model costs about 2x more per image
        # than an 8-image one (measured in benchmarks/results/attribution-quickstart-2026-12-07
        # -rerun.md), and the caller's batch is a size its own forwards already use.
        chunk = min(self.batch_size, batch)
        total = self.num_runs * batch  # every run of every image, batched together
        moved = predict_in_chunks(self.model, perturbed, total, chunk, pick, device)
        drop = clean[:, None] - moved.view(self.num_runs, batch).T  # (B, R)
        self.correlation_sum += row_pearson(mass, drop).sum()
        self.count += batch

    def compute(self) -> Tensor:
        """Mean faithfulness correlation over the images seen."""
        return (self.correlation_sum / self.count.clamp_min(1)).float()
