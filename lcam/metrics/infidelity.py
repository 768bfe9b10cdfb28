r"""Infidelity (Yeh et al., NeurIPS 2019; captum's ``infidelity``), with Gaussian perturbations."""

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

__all__ = ["Infidelity"]


class Infidelity(Metric):
    r"""Mean over images of the squared error of the map's linear prediction of the logit drop
    under random perturbations. Lower is better.

    For each image ``x`` ``(3, H, W)``, map ``S`` (resized to ``H x W`` and broadcast over the
    colour channels) and ``n = 1..N`` perturbations ``I_n ~ N(0, sigma^2)`` per channel pixel,
    with ``d_n = <S, I_n>`` and ``D_n = y_c(x) - y_c(x - I_n)`` (``y_c`` the logit of the
    explained class):

    .. math:: \mathrm{INFD}(x) = \frac1N \sum_n (\beta d_n - D_n)^2, \qquad
              \beta = \frac{\sum_n d_n D_n}{\sum_n d_n^2}

    (captum's ``infidelity(..., normalize=True)``; the optimal scale ``beta`` makes the score
    independent of the map's scale, which min-max normalised maps do not carry; with
    ``normalize=False``, ``beta = 1``). The perturbed images are not clipped; the ``N * B`` of a
    batch are predicted in chunks of ``B`` images (at most ``batch_size``). Noise comes from a
    CPU generator seeded once at construction. States: the sum of scores and the image count.

    Args:
        model: images ``(B, 3, H, W)`` in [0, 1] -> logits ``(B, K)``.
        num_samples: ``N`` (captum ``n_perturb_samples``).
        std: ``sigma`` in [0, 1] image units.
        normalize: fit ``beta`` (``True``) or use the map's own scale.
        batch_size: most images per forward.
        seed: seed of the noise generator.

    ``update(images, maps, targets=None)``: maps ``(B, h, w)``; targets ``(B,)`` (default: the
    predicted class). ``compute()`` returns the mean infidelity.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    infidelity_sum: Tensor
    count: Tensor

    def __init__(
        self,
        model: Model,
        num_samples: int = 10,
        std: float = 0.1,
        normalize: bool = True,
        batch_size: int = 64,
        seed: int = 0,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        if num_samples < 1 or std <= 0:
            raise ValueError("num_samples must be >= 1 and std > 0")
        self.__dict__["model"] = model  # a reference only: not part of the state_dict
        self.num_samples, self.std, self.normalize = num_samples, std, normalize
        self.batch_size = checked_batch_size(batch_size)
        self.generator = torch.Generator().manual_seed(seed)
        self.add_state("infidelity_sum", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")

    def draw_noise(self, images: Tensor) -> Tensor:
        """``(N, B, 3, H, W)`` perturbations for ``images`` ``(B, 3, H, W)``."""
        noise = torch.randn((self.num_samples, *images.shape), generator=self.generator)
        return (noise * self.std).to(images.device, images.dtype)

    def update(self, images: Tensor, maps: Tensor, targets: Tensor | None = None) -> None:
        """Accumulate the infidelity of a batch (shapes in the class docstring)."""
        check_batch(images, maps, targets)
        batch, _, height, width = images.shape
        device = images.device
        maps = upsample_maps(maps.to(device).float(), (height, width)).double()
        classes = resolve_classes(self.model, images, targets, self.batch_size)
        noise = self.draw_noise(images)

        def pick(logits: Tensor, index: Tensor) -> Tensor:
            return logits.double().gather(1, classes[index % batch, None])[:, 0]

        def perturbed(index: Tensor) -> Tensor:
            return images[index % batch] - noise.flatten(0, 1)[index]

        clean = predict_in_chunks(
            self.model, lambda i: images[i], batch, self.batch_size, pick, device
        )
        # Chunks of the caller's own batch size (at most batch_size), not of batch_size: on a
        # CPU a 64-image forward of the 64 px quickstart model costs about 2x more per image
        # than an 8-image one (measured in benchmarks/results/attribution-quickstart-2026-12-07
        # -rerun.md), and the caller's batch is a size its own forwards already use.
        chunk = min(self.batch_size, batch)
        total = self.num_samples * batch
        moved = predict_in_chunks(self.model, perturbed, total, chunk, pick, device)
        drop = clean - moved.view(self.num_samples, batch)  # (N, B)
        dot = torch.einsum("bhw,nbchw->nb", maps, noise.double())
        if self.normalize:
            beta = (dot * drop).mean(dim=0) / dot.square().mean(dim=0).clamp_min(1e-300)
        else:
            beta = torch.ones(batch, dtype=torch.float64, device=device)
        self.infidelity_sum += (beta * dot - drop).square().mean(dim=0).sum()
        self.count += batch

    def compute(self) -> Tensor:
        """Mean infidelity over the images seen."""
        return (self.infidelity_sum / self.count.clamp_min(1)).float()
