"""The contract every explainer keeps, checked over the whole registry and every learned head.

For each registered explainer (``lcam.explainers.EXPLAINERS``) and each head
(``lcam.heads.HEADS``: ``lcam_fm``, ``lcam_img``, ``tame``, ``tame_shared``), on each backbone
path (:mod:`contract_cases`: torch.fx split, torch.fx with in-place ReLUs, hook fallback with
in-place ReLUs): maps of shape ``(B, H, W)`` in [0, 1], in the images' float dtype and on their
device; targets honoured (int, list, tensor, ``None`` = predicted); the pass counts of the
:class:`~lcam.explanation.Explanation` (forward, tail, backward and backward to the input) equal
what hooks on the network count; on the torch.fx path the counts an explainer states
(``forward_passes``, ``tail_passes``, ``backward_passes``: what evaluation code reads as its cost)
are those it ran; the model's parameters, buffers, flags (``inplace``
included) and mode are unchanged; no hook is left on any module, also after an exception inside
the method; and the explainer still gives the same maps after that exception.

Passes are counted as :class:`~lcam.explanation.Explanation` defines them: images reaching the
classifier's last layer (``fc``) are forward passes, images reaching the first layer
(``stem.0``) are full forwards (the rest ran only the tail), gradient batches arriving at the
logits are backward passes and those arriving at the first layer's output reached the image;
each divided by the batch size, and counted while the method (``compute_maps``) runs.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from contract_cases import (
    BATCH,
    OPTIONS,
    REFUSED,
    SIZE,
    PassHooks,
    assert_same_state,
    build,
    cases,
    hooks_left,
    names,
    state,
)
from helpers import tiny_backbone

import lcam
import lcam.maps
from lcam.explainers import EXPLAINERS, DegenerateMapWarning
from lcam.heads import HEADS


@pytest.mark.parametrize(("name", "kind"), cases())
def test_contract(name: str, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    if (name, kind) in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[name, kind]):
            build(name, kind)
        return
    explainer = build(name, kind)
    backbone = explainer.backbone
    images = torch.rand(BATCH, 3, SIZE, SIZE)
    before = state(explainer)
    with torch.no_grad():
        clean = backbone(images)

    # one counted call per way of giving targets
    requests = {
        "predicted": (None, clean.argmax(dim=1)),
        "int": (3, torch.tensor([3, 3])),
        "list": ([4, 1], torch.tensor([4, 1])),
        "tensor": (torch.tensor([2, 0]), torch.tensor([2, 0])),
    }
    results = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for label, (targets, expected) in requests.items():
            counter = PassHooks(explainer)
            try:
                result = explainer.explain(images, targets)
            finally:
                counter.remove()
            results[label] = result
            assert torch.equal(result.targets, expected), label
            assert result.maps.shape == (BATCH, SIZE, SIZE)
            assert result.maps.dtype == images.dtype and result.maps.device == images.device
            assert result.maps.min() >= 0 and result.maps.max() <= 1
            assert result.degenerate.shape == (BATCH,) and result.degenerate.dtype == torch.bool
            torch.testing.assert_close(result.logits, clean, rtol=1e-4, atol=1e-5)
            assert result.method == explainer.name
            measured = counter.per_image(BATCH)
            reported = (
                result.forward_passes,
                result.tail_passes,
                result.backward_passes,
                getattr(result, "backward_to_input", None),
            )
            assert reported == measured, f"{label}: reported {reported}, hooks counted {measured}"
            if kind != "fallback":  # what an explainer states is its cost on the fx split
                stated = (
                    explainer.forward_passes,
                    explainer.tail_passes,
                    explainer.backward_passes,
                )
                assert stated == measured[:3], f"stated {stated}, hooks counted {measured}"
    degenerate_warnings = [w for w in caught if issubclass(w.category, DegenerateMapWarning)]
    assert len(degenerate_warnings) <= 1  # once per explainer instance
    assert not hooks_left(explainer)
    assert_same_state(before, state(explainer))

    # an exception inside the method (raised by the classifier layer, however the method
    # reaches it) leaves no hook and no change behind ...
    def broken(*args: object) -> torch.Tensor:
        raise RuntimeError("classifier exploded")

    monkeypatch.setattr(backbone.model.fc, "forward", broken)
    with pytest.raises(RuntimeError, match="classifier exploded"):
        explainer.explain(images, [4, 1])
    monkeypatch.undo()
    assert not hooks_left(explainer)
    assert_same_state(before, state(explainer))
    # ... and the explainer still works, with the same maps
    again = explainer.explain(images, [4, 1])
    torch.testing.assert_close(again.maps, results["list"].maps, rtol=0, atol=1e-6)


@pytest.mark.filterwarnings("ignore::lcam.explainers.DegenerateMapWarning")
@pytest.mark.parametrize(("name", "kind"), cases())
def test_float64_and_bfloat16_images(name: str, kind: str) -> None:
    """Images in float64 or bfloat16 give the maps of the same images in float32, returned in
    the images' dtype (the network computes in its own dtype)."""
    if (name, kind) in REFUSED:
        return
    explainer = build(name, kind)
    images = torch.rand(BATCH, 3, SIZE, SIZE)
    for dtype, atol in ((torch.float64, 1e-6), (torch.bfloat16, 1e-2)):
        given = images.to(dtype)
        reference = explainer.explain(given.float(), [4, 1])
        result = explainer.explain(given, [4, 1])
        assert result.maps.dtype == dtype, dtype
        torch.testing.assert_close(
            result.maps.float(), reference.maps, rtol=0, atol=atol, msg=str(dtype)
        )
        torch.testing.assert_close(result.logits, reference.logits, rtol=0, atol=1e-6)


def test_every_registered_explainer_is_covered() -> None:
    """A new explainer or head joins the contract automatically; slow defaults need an OPTIONS
    entry."""
    assert set(OPTIONS) <= set(EXPLAINERS)
    assert len(names()) == len(EXPLAINERS) + len(HEADS) >= 18
    assert "tame_shared" in names()


@pytest.mark.parametrize("activation", ["sigmoid", "logit"])
def test_learned_heads_keep_their_pre_activation_maps(activation: str) -> None:
    """``raw_maps`` of a learned head are its logit maps whatever ``map_activation`` shows; the
    shown maps are those activated, resized and normalised (what the AD/IC protocol relies on)."""
    explainer = lcam.build_explainer(tiny_backbone(), head="lcam_fm", map_activation=activation)
    with torch.no_grad():  # a head with varied maps, not its near-constant initial ones
        for parameter in explainer.head.parameters():
            parameter.normal_()
    images = torch.rand(3, 3, 32, 32)
    explanation = explainer.explain(images)
    output = explainer.backbone.run(images)
    logits = explainer.head.target_maps(output, explanation.targets)
    torch.testing.assert_close(explanation.raw_maps, logits.float())
    shown = logits.sigmoid() if activation == "sigmoid" else logits
    expected = lcam.maps.normalise_maps(lcam.maps.upsample_maps(shown.float(), (32, 32)))
    torch.testing.assert_close(explanation.maps, expected)
