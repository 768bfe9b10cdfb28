"""Infidelity equals captum's ``infidelity`` on the same perturbations (normalised and not), and
a map of the evidence is more faithful than maps of an irrelevant region or trivial maps."""

from __future__ import annotations

import pytest
import torch
from captum.metrics import infidelity
from helpers import PlantedRegion
from metric_cases import quadrant_map, region_images, tiny_network, trivial_maps

from lcam.metrics import Infidelity


@pytest.mark.parametrize("normalize", [True, False])
def test_matches_captum(normalize: bool) -> None:
    model, images, maps = tiny_network()
    with torch.no_grad():
        targets = model(images).argmax(dim=1)
    metric = Infidelity(model, num_samples=5, std=0.05, normalize=normalize, batch_size=4, seed=2)
    noise = Infidelity(model, num_samples=5, std=0.05, seed=2).draw_noise(images)
    image_major = noise.transpose(0, 1).flatten(0, 1)  # captum repeats each image n times

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return image_major, inputs - image_major

    expected = infidelity(
        model, perturb, images, maps[:, None].expand_as(images), target=targets,
        n_perturb_samples=5, normalize=normalize,
    )  # fmt: skip
    metric.update(images, maps, targets)
    torch.testing.assert_close(metric.compute(), expected.mean().float(), rtol=1e-4, atol=1e-7)


def test_map_of_the_evidence_beats_bad_and_trivial_maps() -> None:
    """On a linear model of the top-left quadrant the top-left map predicts every logit drop
    (infidelity ~1e-13); an irrelevant quadrant, a constant map and a centre prior ~1e-3."""
    model, images = PlantedRegion(16), region_images()
    targets = torch.zeros(4, dtype=torch.long)
    scores = {}
    named = {"good": quadrant_map(4, "tl"), "bad": quadrant_map(4, "tr")}
    for name, maps in {**named, **trivial_maps(4)}.items():
        metric = Infidelity(model, num_samples=20, std=0.05, seed=1)
        metric.update(images, maps, targets)
        scores[name] = metric.compute().item()
    assert scores["good"] < 1e-8, scores
    assert all(scores[n] > 5e-4 for n in scores if n != "good"), scores
