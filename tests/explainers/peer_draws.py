"""captum's random draws replayed: the noise ``NoiseTunnel`` adds and GradientShap's baselines and
path points, laid out as lcam takes them (sample-major ``(n, B, ...)``)."""

from __future__ import annotations

import numpy as np
import torch


def captum_noise(images: torch.Tensor, samples: int, stdev: float, seed: int) -> torch.Tensor:
    """The ``(n, B, 3, H, W)`` noise ``NoiseTunnel`` draws after ``torch.manual_seed(seed)``
    (one ``torch.normal`` over the image-major ``(B * n, 3, H, W)`` batch)."""
    torch.manual_seed(seed)
    shape = (len(images) * samples, *images.shape[1:])
    noise = torch.normal(0, torch.tensor(stdev).repeat(shape))
    return noise.view(len(images), samples, *images.shape[1:]).transpose(0, 1)


def captum_shap_draws(batch: int, samples: int, references: int, seed: int) -> tuple:
    """GradientShap's ``(n, B)`` baseline indices and path points after ``np.random.seed(seed)``
    (``np.random.choice`` over the image-major batch, then ``np.random.uniform``)."""
    np.random.seed(seed)
    index = np.random.choice(references, samples * batch)
    alphas = np.random.uniform(0.0, 1.0, samples * batch)
    as_grid = lambda values: torch.as_tensor(values).view(batch, samples).T  # noqa: E731
    return as_grid(index).long(), as_grid(alphas).double()
