"""TAME at one forward's cost: eval-time BN folding, the low-rank all-K path, old checkpoints.

The folded branches must compute the unfolded function (to float rounding), the low-rank head's
all-``K`` maps must equal its per-class maps and the dense fuse ``W = U V``, and a TAME state
dict in the layout saved before folding existed must load and give the maps its formula gives.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lcam.backbone import BackboneOutput
from lcam.heads import LiteTAMEHead, SharedTAMEHead, TAMEHead
from lcam.heads import tame as tame_module
from lcam.heads import tame_lite as lite_module
from lcam.heads.tame_lite import branch_rank

CHANNELS = [8, 16, 24]


def _layers(batch: int = 3) -> list[Tensor]:
    """Features ``[(B, C_i, h_i, w_i)]`` at three resolutions, shallow to deep."""
    generator = torch.Generator().manual_seed(1)
    return [
        torch.randn(batch, c, s, s, generator=generator)
        for c, s in zip(CHANNELS, (8, 4, 2), strict=True)
    ]


def _randomise_norms(head: nn.Module) -> None:
    """Running statistics and affine parameters far from BN's identity initialisation, so a
    wrong fold (a missing scale, shift or residual) changes the maps."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for module in head.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.running_mean.copy_(torch.randn(c, generator=generator))
                module.running_var.copy_(torch.rand(c, generator=generator) * 2 + 0.3)
                module.weight.copy_(torch.randn(c, generator=generator))
                module.bias.copy_(torch.randn(c, generator=generator))


def _output(layers: list[Tensor]) -> BackboneOutput:
    return BackboneOutput(layers[-1], torch.zeros(len(layers[0]), 5), layers=tuple(layers))


HEADS = {
    "tame": lambda: TAMEHead(CHANNELS, 5),
    "tame_shared": lambda: SharedTAMEHead(CHANNELS, 5),
    "tame_lite": lambda: LiteTAMEHead(CHANNELS, 5, min_branch_rank=4, branch_reduction=4),
    "tame_lite_low_rank": lambda: LiteTAMEHead(CHANNELS, 5, min_branch_rank=4, fuse_rank=3),
}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_eval_folding_equals_the_unfolded_head(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    head = HEADS[name]()
    _randomise_norms(head)
    if isinstance(head, SharedTAMEHead):
        nn.init.normal_(head.fuse.weight, std=0.1)
    head.eval()
    layers = _layers()
    targets = torch.tensor([4, 0, 2])
    with torch.no_grad():
        folded = head(layers), head.target_maps(_output(layers), targets)
        again = head(layers)  # the cached fold
        monkeypatch.setattr(tame_module, "can_fold", lambda norm: False)
        monkeypatch.setattr(lite_module, "can_fold", lambda norm: False)
        unfolded = head(layers), head.target_maps(_output(layers), targets)
    assert unfolded[0].abs().amax() > 1.0  # maps of a size where 1e-5 is a real tolerance
    for got, expected in zip(folded, unfolded, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, folded[0], rtol=0, atol=0)


def test_the_fold_follows_a_change_of_the_weights() -> None:
    """The cached fold is recomputed after an in-place update (an optimiser step, a load)."""
    torch.manual_seed(0)
    head = TAMEHead(CHANNELS, 5)
    _randomise_norms(head)
    head.eval()
    layers = _layers()
    with torch.no_grad():
        before = head(layers)
        head.branches[2].conv.weight.mul_(2.0)
        head.branches[1].norm.running_var.mul_(3.0)
        after = head(layers)
    assert (after - before).abs().amax() > 1e-2
    with torch.no_grad():
        for branch, layer in zip(head.branches, layers, strict=True):
            unfolded = F.relu(branch.norm(branch.conv(layer)) + layer)
            torch.testing.assert_close(branch(layer), unfolded, rtol=1e-5, atol=1e-5)


def test_low_rank_all_k_maps_equal_the_per_class_maps_and_the_dense_fuse() -> None:
    torch.manual_seed(0)
    head = LiteTAMEHead(CHANNELS, 7, min_branch_rank=4, fuse_rank=3)
    assert head.basis is not None and head.fuse.weight.shape == (7, 3, 1, 1)
    _randomise_norms(head)
    head.eval()
    layers = _layers()
    targets = torch.tensor([6, 0, 3])
    with torch.no_grad():
        all_maps = head(layers)  # b + U (sum_i up(V_i G_i)): mixed at rank 3
        per_class = head.target_maps(_output(layers), targets)  # rows U_k V
        dense = TAMEHead.forward(head, layers)  # TAME's path with the (7, 48) weight U V
    assert all_maps.shape == (3, 7, 8, 8)
    torch.testing.assert_close(all_maps[torch.arange(3), targets], per_class, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(all_maps, dense, rtol=1e-5, atol=1e-5)
    weight, _ = head.fuse_rows()
    assert torch.linalg.matrix_rank(weight) == 3


def test_the_lite_head_is_full_rank_and_narrow_where_it_should_be() -> None:
    assert LiteTAMEHead(CHANNELS, 5, fuse_rank=64).basis is None  # K <= r: a rank cuts nothing
    assert [branch_rank(c, 16, 32) for c in (512, 1024, 2048)] == [32, 64, 128]  # ResNet-50
    assert branch_rank(24, 16, 32) == 24  # never wider than the branch


def test_a_tame_state_dict_of_the_layout_before_folding_loads_and_keeps_its_maps() -> None:
    """The keys TAME saved before eval folding existed (commit a220c8a), with random values:
    strict loading must accept them, and the eval maps must be the formula
    ``b + sum_i up(W_i ReLU(BN(conv_i F_i) + F_i))`` computed from those tensors directly."""
    generator = torch.Generator().manual_seed(3)
    state: dict[str, Tensor] = {}
    for index, c in enumerate(CHANNELS):
        state[f"branches.{index}.conv.weight"] = torch.randn(c, c, 1, 1, generator=generator) / c
        state[f"branches.{index}.norm.weight"] = torch.rand(c, generator=generator) + 0.5
        state[f"branches.{index}.norm.bias"] = torch.randn(c, generator=generator)
        state[f"branches.{index}.norm.running_mean"] = torch.randn(c, generator=generator)
        state[f"branches.{index}.norm.running_var"] = torch.rand(c, generator=generator) + 0.5
        state[f"branches.{index}.norm.num_batches_tracked"] = torch.tensor(100)
    state["fuse.weight"] = torch.randn(5, sum(CHANNELS), 1, 1, generator=generator)
    state["fuse.bias"] = torch.randn(5, generator=generator)
    head = TAMEHead(CHANNELS, 5)
    head.load_state_dict(state, strict=True)
    head.eval()
    layers = _layers()
    expected = state["fuse.bias"].view(1, -1, 1, 1)
    for index, layer in enumerate(layers):
        prefix = f"branches.{index}."
        normed = F.batch_norm(
            F.conv2d(layer, state[prefix + "conv.weight"]),
            state[prefix + "norm.running_mean"],
            state[prefix + "norm.running_var"],
            state[prefix + "norm.weight"],
            state[prefix + "norm.bias"],
            training=False,
            eps=1e-5,
        )
        start = sum(CHANNELS[:index])
        rows = state["fuse.weight"][:, start : start + CHANNELS[index]]
        mixed = F.conv2d(F.relu(normed + layer), rows)
        expected = expected + F.interpolate(mixed, size=(8, 8), mode="bilinear")
    with torch.no_grad():
        torch.testing.assert_close(head(layers), expected, rtol=1e-5, atol=1e-5)
    assert set(head.state_dict()) == set(state)
