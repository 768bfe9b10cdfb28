"""One backbone, many explainers; and the user's module is left as it was found.

Explainers built on one ``FrozenBackbone`` each get their own view of the network (weights
shared, not copied): building one never changes what another computes, in any order. And
``FrozenBackbone(model)`` does not touch the user's module: its ``requires_grad`` flags,
training mode, parameters and hooks stay as they were, and gradients still flow through it.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import tiny_backbone
from torch import Tensor, nn

import lcam
from lcam.backbone import FrozenBackbone
from lcam.models import TinyResNet

METHODS = ("lcam_fm", "tame", "gradcam", "scorecam")


def build(method: str, backbone: FrozenBackbone) -> lcam.explainers.base.Explainer:
    """``method`` on ``backbone``; a head's random weights are drawn from a fixed seed."""
    if method in ("lcam_fm", "tame"):
        torch.manual_seed(METHODS.index(method))
        return lcam.build_explainer(backbone, method).eval()
    return lcam.get_explainer(method, backbone)


def backbone_of_seed() -> FrozenBackbone:
    """The same random TinyResNet each call (a seed where no map is degenerate)."""
    torch.manual_seed(1)
    return tiny_backbone()


def images() -> Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def alone() -> dict[str, Tensor]:
    """Each method's maps on a backbone of its own (none degenerate: they can differ)."""
    explanations = {m: build(m, backbone_of_seed()).explain(images()) for m in METHODS}
    assert not any(e.degenerate.any() for e in explanations.values())
    return {method: explanation.maps for method, explanation in explanations.items()}


@pytest.mark.parametrize("order", list(itertools.permutations(METHODS)), ids="-".join)
def test_explainers_on_one_backbone_give_the_maps_they_give_alone(order, alone) -> None:
    backbone = backbone_of_seed()
    layers = backbone.target_layers
    explainers = {method: build(method, backbone) for method in order}
    assert backbone.target_layers == layers  # building did not retarget the shared backbone
    for method in METHODS:
        maps = explainers[method].explain(images()).maps
        torch.testing.assert_close(maps, alone[method], rtol=1e-5, atol=1e-6, msg=method)
    for first, second in itertools.combinations(METHODS, 2):  # the methods' maps differ
        assert not torch.allclose(alone[first], alone[second], atol=1e-3), (first, second)


def test_explainers_share_the_weights_not_a_copy() -> None:
    backbone = backbone_of_seed()
    tame = build("tame", backbone)
    ours = {id(p) for p in backbone.model.parameters()}
    assert {id(p) for p in tame.backbone.model.parameters()} == ours
    storage = {p.data_ptr() for p in backbone.model.parameters()}
    assert {p.data_ptr() for p in build("gradcam", backbone).backbone.model.parameters()} == (
        storage
    )


def user_model() -> nn.Module:
    """A TinyResNet as a user holds it mid-fine-tuning: training mode, one submodule in eval,
    the first convolution frozen by the user, a forward hook of the user's own."""
    model = TinyResNet(num_classes=5, width=8).train()
    model.get_submodule("layer1").eval()
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    first.weight.requires_grad_(False)
    return model


def state(model: nn.Module) -> dict[str, object]:
    return {
        "flags": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "parameters": {n: id(p) for n, p in model.named_parameters()},
        "values": {n: p.detach().clone() for n, p in model.state_dict().items()},
        "hooks": {
            n: (list(m._forward_hooks), list(m._forward_pre_hooks), list(m._backward_hooks))
            for n, m in model.named_modules()
        },
    }


def test_frozen_backbone_leaves_the_users_module_as_it_found_it() -> None:
    model = user_model()
    seen: list[int] = []
    model.register_forward_hook(lambda *_: seen.append(1))
    before = state(model)
    backbone = FrozenBackbone(model, input_size=32)
    for method in METHODS:
        build(method, backbone).explain(images())
    after = state(model)
    for key in ("flags", "training", "parameters", "hooks"):
        assert after[key] == before[key], key
    for name, value in before["values"].items():
        torch.testing.assert_close(after["values"][name], value, rtol=0, atol=0, msg=name)
    assert all(not p.requires_grad for p in backbone.parameters())
    assert not backbone.model.training

    # a peer (or the user's fine-tuning) still gets gradients on the module afterwards
    seen.clear()
    model(images()).logsumexp(1).sum().backward()
    assert seen == [1]
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == before["flags"][name], name
    assert sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None) > 0

    # ... and the backbone sees the user's step: it runs on the same storage
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    model.eval()
    with torch.no_grad():
        expected = model((images() - backbone.mean) / backbone.std)
    torch.testing.assert_close(backbone(images()), expected, rtol=1e-5, atol=1e-6)


def test_moving_one_explainer_moves_the_network_and_normalisation_of_all() -> None:
    """Lightning moves the trained explainer (a view); a teacher on the original backbone
    must find the normalisation where the shared weights went."""
    backbone = backbone_of_seed()
    build("tame", backbone).to(torch.float64)
    assert backbone.mean.dtype == torch.float64 and backbone.std.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in backbone.model.parameters())
    explanation = build("gradcam", backbone).explain(images().double())
    assert explanation.logits.dtype == torch.float64
