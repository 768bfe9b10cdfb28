"""Faithfulness correlation equals Quantus's on the same subsets, and ranks a map of the evidence
above a map of an irrelevant region and above the trivial answers."""

from __future__ import annotations

import numpy as np
import pytest
import quantus
import torch
from metric_cases import RegionContrast, quadrant_map, region_images, tiny_network, trivial_maps

from lcam.metrics import FaithfulnessCorrelation


def test_matches_quantus_on_the_same_subsets(monkeypatch: pytest.MonkeyPatch) -> None:
    model, images, maps = tiny_network()
    with torch.no_grad():
        targets = model(images).argmax(dim=1)
    drawn: list[np.ndarray] = []
    choice = np.random.choice

    def recording_choice(*args: object, **kwargs: object) -> np.ndarray:
        drawn.append(choice(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(np.random, "choice", recording_choice)
    reference = quantus.FaithfulnessCorrelation(
        nr_runs=6, subset_size=40, return_aggregate=False, disable_warnings=True
    )(
        model=model, x_batch=images.numpy(), y_batch=targets.numpy(),
        a_batch=maps[:, None].numpy(), device="cpu",
    )  # fmt: skip
    monkeypatch.undo()
    assert len(drawn) == 6 * 3

    class Replayed(FaithfulnessCorrelation):
        def draw_subset(self, run: int, batch: int, features: int) -> torch.Tensor:
            return torch.as_tensor(np.stack(drawn[run * batch : (run + 1) * batch]))

    metric = Replayed(model, num_runs=6, subset_size=40)
    metric.update(images, maps, targets)
    assert abs(metric.compute().item() - float(np.mean(reference))) < 1e-5


def test_map_of_the_evidence_beats_bad_and_trivial_maps() -> None:
    model, images = RegionContrast(), region_images()
    scores = {}
    named = {"good": quadrant_map(4, "tl", "br"), "bad": quadrant_map(4, "tr")}
    for name, maps in {**named, **trivial_maps(4)}.items():
        metric = FaithfulnessCorrelation(model, num_runs=30, subset_size=96, seed=1)
        metric.update(images, maps, torch.zeros(4, dtype=torch.long))
        scores[name] = metric.compute().item()
    assert scores["good"] > 0.5, scores
    assert all(scores["good"] > scores[other] + 0.4 for other in scores if other != "good"), scores
