"""The contract every explainer keeps, checked over the whole registry and every learned head.

For each registered explainer (``lcam.explainers.EXPLAINERS``) and each head (``lcam_fm``,
``lcam_img``, ``tame``) on a tiny ResNet: maps of shape ``(B, H, W)`` in [0, 1], in the images'
float dtype and on their device; targets honoured (int, list, tensor, ``None`` = predicted);
the pass counts of the :class:`~lcam.explanation.Explanation` equal what hooks on the network
count; the model's parameters, buffers, flags and mode are unchanged; no hook is left on any
module, also after an exception inside the method; and the explainer still gives the same maps
after that exception.

Passes are counted as :class:`~lcam.explanation.Explanation` defines them: images reaching the
classifier's last layer (``fc``) are forward passes, images reaching the first layer
(``stem.0``) are full forwards (the rest ran only the tail), and gradient batches arriving at
the logits are backward passes; each divided by the batch size.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from helpers import tiny_backbone
from torch import nn

import lcam
import lcam.maps
from lcam.explainers import EXPLAINERS, DegenerateMapWarning, Explainer, get_explainer

SIZE, BATCH, CLASSES = 32, 2, 5
HEADS = ["lcam_fm", "lcam_img", "tame"]


def grid_segments(image: np.ndarray) -> np.ndarray:
    """Nine 3 x 3 blocks as superpixels (fast and the same on every image)."""
    rows = np.arange(image.shape[0]) * 3 // image.shape[0]
    cols = np.arange(image.shape[1]) * 3 // image.shape[1]
    return rows[:, None] * 3 + cols[None, :]


# Small settings so the whole contract runs in seconds; any option left out keeps its default.
OPTIONS: dict[str, dict[str, object]] = {
    "rise": {"num_masks": 6, "s": 4, "batch_size": 5},
    "occlusion": {"patch_size": 16, "stride": 8, "batch_size": 5},
    "lime": {"num_samples": 7, "segmentation": grid_segments, "batch_size": 4},
    "kernel_shap": {"num_samples": 7, "segmentation": grid_segments, "batch_size": 4},
    "scorecam": {"batch_size": 24},
    "ablationcam": {"batch_size": 24},
}


class PassHooks:
    """Counts images through the first layer and the classifier, and gradient batches at both."""

    def __init__(self, first: nn.Module, last: nn.Module) -> None:
        self.full = self.logits = self.backward = self.backward_to_input = 0
        self.handles = [
            first.register_forward_hook(self._first),
            last.register_forward_hook(self._last),
        ]

    def _first(self, _module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        self.full += output.shape[0]
        if output.requires_grad:  # a backward from here on reaches the image
            output.register_hook(lambda grad: self._add("backward_to_input", grad))

    def _last(self, _module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        self.logits += output.shape[0]
        if output.requires_grad:
            output.register_hook(lambda grad: self._add("backward", grad))

    def _add(self, name: str, grad: torch.Tensor) -> None:
        setattr(self, name, getattr(self, name) + grad.shape[0])

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def build(name: str) -> Explainer:
    backbone = tiny_backbone(num_classes=CLASSES, input_size=SIZE)
    if name in HEADS:
        return lcam.build_explainer(backbone, head=name)
    return get_explainer(name, backbone, **OPTIONS.get(name, {}))


def state(explainer: Explainer) -> dict[str, object]:
    """Everything an explainer must leave as it found it on the network."""
    model = explainer.backbone.model
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "inplace": [getattr(m, "inplace", None) for m in model.modules()],
    }


def assert_same_state(before: dict[str, object], after: dict[str, object]) -> None:
    assert before.keys() == after.keys()
    for key in ("requires_grad", "training", "inplace"):
        assert before[key] == after[key], key
    old, new = before["tensors"], after["tensors"]
    assert old.keys() == new.keys()
    for name in old:
        torch.testing.assert_close(new[name], old[name], rtol=0, atol=0, msg=name)


def hooks_left(explainer: Explainer) -> list[str]:
    """Modules of the network and of the explainer that still carry a hook."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    modules: Iterator[tuple[str, nn.Module]] = explainer.named_modules(remove_duplicate=False)
    return [
        f"{name or '<root>'}.{kind}" for name, m in modules for kind in kinds if getattr(m, kind)
    ]


def names() -> list[str]:
    return sorted(EXPLAINERS) + HEADS


@pytest.mark.parametrize("name", names())
def test_contract(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    explainer = build(name)
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
            counter = PassHooks(backbone.model.stem[0], backbone.model.fc)
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
            measured = (
                counter.logits / BATCH,
                (counter.logits - counter.full) / BATCH,
                counter.backward / BATCH,
            )
            reported = (result.forward_passes, result.tail_passes, result.backward_passes)
            assert reported == measured, f"{label}: reported {reported}, hooks counted {measured}"
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


def test_every_registered_explainer_is_covered() -> None:
    """A new explainer joins the contract automatically; slow defaults need an OPTIONS entry."""
    assert set(OPTIONS) <= set(EXPLAINERS)
    assert len(names()) == len(EXPLAINERS) + len(HEADS) >= 17


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
