"""Sparseness equals Quantus's Gini index, and a concentrated map is sparser than diffuse ones."""

from __future__ import annotations

import numpy as np
import quantus
import torch
from metric_cases import quadrant_map, tiny_network, trivial_maps

from lcam.metrics import Sparseness


def test_matches_quantus() -> None:
    model, images, maps = tiny_network()
    reference = quantus.Sparseness(return_aggregate=False, disable_warnings=True)(
        model=model, x_batch=images.numpy(), y_batch=np.zeros(3, dtype=int),
        a_batch=maps[:, None].numpy(), device="cpu",
    )  # fmt: skip
    ours = Sparseness.gini(maps)
    np.testing.assert_allclose(ours.numpy(), np.array(reference), rtol=1e-5, atol=1e-6)
    metric = Sparseness()
    metric.update(images, maps[:2])
    metric.update(images, maps[2:])
    assert abs(metric.compute().item() - float(np.mean(reference))) < 1e-6


def test_concentrated_map_is_sparser_than_diffuse_ones() -> None:
    diffuse = torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(0))
    scores = {
        name: Sparseness.gini(maps).mean().item()
        for name, maps in {
            "quadrant": quadrant_map(4, "tl"),
            "diffuse": diffuse,
            **trivial_maps(4),
        }.items()
    }
    assert scores["quadrant"] > 0.7 and scores["constant"] < 1e-6, scores
    assert all(scores["quadrant"] > scores[n] + 0.3 for n in scores if n != "quadrant"), scores
