from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

import lcam
from lcam.data import SyntheticShapes
from lcam.evaluation.sanity import (
    average_ranks,
    model_randomisation,
    randomisable_layers,
    reinitialise,
    spearman,
)
from lcam.models.tiny import SHAPES_WEIGHTS


@pytest.fixture(scope="module")
def backbone() -> lcam.FrozenBackbone:
    return lcam.FrozenBackbone(
        "lcam.models.TinyResNet", num_classes=6, weights=str(SHAPES_WEIGHTS), input_size=64
    )


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    data = SyntheticShapes(4, seed=7)
    return torch.stack([data[i]["image"] for i in range(4)])


def test_spearman_matches_scipy_with_ties() -> None:
    generator = torch.Generator().manual_seed(0)
    first = torch.rand(3, 10, 10, generator=generator)
    second = (torch.rand(3, 10, 10, generator=generator) * 4).round()  # many ties
    first[0, :5] = 0.0  # ties in the first argument too
    ours = spearman(first, second)
    for index in range(3):
        expected = spearmanr(first[index].flatten(), second[index].flatten()).statistic
        assert ours[index].item() == pytest.approx(expected, abs=1e-6)
    assert average_ranks(torch.tensor([[2.0, 1.0, 2.0, 0.0]])).tolist() == [[2.5, 1, 2.5, 0]]
    assert spearman(first, first).tolist() == pytest.approx([1.0] * 3)
    assert spearman(first, torch.zeros_like(first)).tolist() == [0.0] * 3  # no ranking


def test_layers_run_in_forward_order(backbone) -> None:
    layers = randomisable_layers(backbone)
    assert layers[0] == "stem.0" and layers[-1] == "fc"
    assert layers.index("layer3.0.conv1") < layers.index("layer4.0.conv1")
    assert len(layers) == 13  # 12 convolutions and the linear layer of TinyResNet


def test_reinitialise_is_seeded_and_changes_the_weights() -> None:
    first, second = torch.nn.Conv2d(4, 8, 3), torch.nn.Conv2d(4, 8, 3)
    trained = first.weight.detach().clone()
    reinitialise(first, torch.Generator().manual_seed(1))
    reinitialise(second, torch.Generator().manual_seed(1))
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)
    assert not torch.equal(first.weight, trained)
    bound = 1 / (4 * 9) ** 0.5
    assert first.weight.abs().max() <= bound and first.bias.abs().max() <= bound


def test_randomising_the_model_changes_gradcam_but_not_the_original(backbone, images) -> None:
    before = {key: value.clone() for key, value in backbone.state_dict().items()}
    gradcam = lcam.get_explainer("gradcam", backbone)
    head = lcam.build_explainer(backbone)
    original_maps = gradcam.explain(images).maps
    rng_state = torch.get_rng_state()

    rows = model_randomisation(
        backbone, {"gradcam": gradcam, "lcam": head}, images, modes=("cascading", "independent")
    )

    after = backbone.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert torch.equal(gradcam.explain(images).maps, original_maps)
    # Explainers run their own views of the backbone over the very same weight storage.
    weights = {parameter.data_ptr() for parameter in backbone.parameters()}
    for explainer in (gradcam, head):
        assert {p.data_ptr() for p in explainer.backbone.parameters()} == weights
    assert torch.equal(torch.get_rng_state(), rng_state)  # seeded generators only

    assert len(rows) == 2 * 13 * 2
    cascading = [r for r in rows if r["mode"] == "cascading" and r["method"] == "gradcam"]
    assert [r["step"] for r in cascading] == list(range(1, 14))
    assert cascading[0]["layer"] == "fc" and cascading[-1]["layer"] == "stem.0"
    assert cascading[-1]["spearman"] < 0.5
    assert all(r["spearman"] < 0.99 for r in cascading)
    # Step 1 randomises only the top layer in both modes, from the same seed.
    independent = [r for r in rows if r["mode"] == "independent" and r["method"] == "gradcam"]
    assert independent[0]["spearman"] == pytest.approx(cascading[0]["spearman"])
    # The learned head reads the target-layer features, which the fc layer does not touch.
    head_rows = [r for r in rows if r["method"] == "lcam" and r["layer"] == "fc"]
    assert all(r["spearman"] == pytest.approx(1.0) for r in head_rows)
    # Independent steps restore the layer: randomising layer4.0.conv1 alone differs from
    # randomising everything above it too.
    by_layer = {(r["mode"], r["layer"]): r["spearman"] for r in rows if r["method"] == "gradcam"}
    assert by_layer[("independent", "layer4.0.conv1")] != pytest.approx(
        by_layer[("cascading", "layer4.0.conv1")]
    )


def test_factories_and_explicit_layers(backbone, images) -> None:
    layers = ["layer4.0.conv2", "fc"]
    with torch.inference_mode():  # as in Lightning's on_test_epoch_end
        from_explainer = model_randomisation(
            backbone,
            {"gradcam": lcam.get_explainer("gradcam", backbone)},
            images.clone(),
            modes=("cascading", "independent"),
            layers=layers,
        )
    from_factory = model_randomisation(
        backbone,
        {"gradcam": lambda b: lcam.get_explainer("gradcam", b)},
        images,
        modes=("cascading",),
        layers=layers,
    )
    assert [r["layer"] for r in from_factory] == ["fc", "layer4.0.conv2"]
    for a, b in zip(from_explainer[:2], from_factory, strict=True):
        assert a["spearman"] == pytest.approx(b["spearman"])
    with pytest.raises(ValueError, match="not modules"):
        model_randomisation(backbone, {"g": lambda b: None}, images, layers=["nope"])
    with pytest.raises(ValueError, match="unknown modes"):
        model_randomisation(backbone, {"g": lambda b: None}, images, modes=("random",))
