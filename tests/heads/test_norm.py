"""GlobalBatchNorm2d: batch normalisation over the global batch of a data-parallel run.

Two ranks are simulated by two threads in one process: ``_summed`` (the layer's differentiable
all-reduce) is replaced by a barrier that adds the two ranks' tensors, keeping the autograd graph,
as ``torch.distributed.nn.functional.all_reduce`` does across processes. Each rank holds its own
copy of the layer, as under DDP, and the ranks hold different numbers of images.
"""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from torch import Tensor, nn

from lcam.heads import TAMEHead
from lcam.heads import norm as norm_module
from lcam.heads.norm import GlobalBatchNorm2d


def _two_ranks(
    layer: nn.BatchNorm2d, inputs: list[Tensor], monkeypatch: pytest.MonkeyPatch
) -> tuple[list[nn.BatchNorm2d], list[Tensor]]:
    """Run a copy of ``layer`` per rank on ``inputs[r]`` ``(B_r, C, h, w)`` at the same time;
    the copies and their outputs ``(B_r, C, h, w)``."""
    barrier = threading.Barrier(len(inputs))
    posted: dict[int, Tensor] = {}
    ranks = {}

    def summed(values: Tensor) -> Tensor:
        rank = ranks[threading.get_ident()]
        posted[rank] = values
        barrier.wait()
        total = sum(posted[r] for r in range(len(inputs)))
        barrier.wait()  # everyone has read this round before the next one posts
        return total

    monkeypatch.setattr(norm_module, "_summed", summed)
    monkeypatch.setattr(norm_module, "_world_size", lambda: len(inputs))
    copies = [copy.deepcopy(layer) for _ in inputs]
    outputs: list[Tensor | None] = [None] * len(inputs)

    def run(rank: int) -> None:
        ranks[threading.get_ident()] = rank
        outputs[rank] = copies[rank](inputs[rank])

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(output is not None for output in outputs), "a rank did not finish"
    return copies, outputs  # type: ignore[return-value]


def test_equals_batchnorm_on_the_concatenated_uneven_batch(monkeypatch) -> None:
    torch.manual_seed(0)
    layer = GlobalBatchNorm2d(4).train()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2)
        layer.bias.normal_()
    inputs = [
        (torch.randn(n, 4, 5, 5) * 3 + 1).requires_grad_() for n in (3, 5)
    ]  # uneven per-rank batches
    weights = [torch.randn(n, 4, 5, 5) for n in (3, 5)]  # a loss that is not BN-invariant
    reference = nn.BatchNorm2d(4).train()
    reference.load_state_dict(layer.state_dict())
    joined = torch.cat([x.detach() for x in inputs]).requires_grad_()
    expected = reference(joined)
    (expected * torch.cat(weights)).sum().backward()

    copies, outputs = _two_ranks(layer, inputs, monkeypatch)
    sum((out * w).sum() for out, w in zip(outputs, weights, strict=True)).backward()

    torch.testing.assert_close(torch.cat(outputs), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.cat([x.grad for x in inputs]), joined.grad, atol=1e-5, rtol=0)
    for name in ("weight", "bias"):  # DDP sums (then averages) the ranks' parameter gradients
        total = sum(getattr(c, name).grad for c in copies)
        torch.testing.assert_close(total, getattr(reference, name).grad, rtol=0, atol=1e-4)
    for c in copies:  # running statistics as BatchNorm2d keeps them, on every rank
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(
                getattr(c, name), getattr(reference, name), atol=1e-6, rtol=0
            )

    # Plain BatchNorm2d per rank (what DDP did before) is not the global batch's normalisation.
    local = torch.cat([reference(x.detach()) for x in inputs])
    assert (local - expected).abs().max() > 1e-2


def test_one_process_and_eval_mode_are_batchnorm() -> None:
    torch.manual_seed(0)
    layer, reference = GlobalBatchNorm2d(3), nn.BatchNorm2d(3)
    images = torch.randn(6, 3, 4, 4)
    torch.testing.assert_close(layer(images), reference(images), rtol=0, atol=0)
    torch.testing.assert_close(layer.running_var, reference.running_var, rtol=0, atol=0)
    layer.eval(), reference.eval()
    torch.testing.assert_close(layer(images), reference(images), rtol=0, atol=0)


def test_an_old_checkpoint_with_conv_bias_gives_the_same_eval_maps() -> None:
    """Before the change each branch was ``conv (with bias) -> BatchNorm2d``; its checkpoint loads
    into the bias-free branch with the bias folded into the running mean, and eval-mode maps are
    the old head's."""
    torch.manual_seed(0)
    head = TAMEHead([4, 6], num_classes=3).eval()
    with torch.no_grad():
        for branch in head.branches:
            branch.norm.running_mean.normal_()
            branch.norm.running_var.uniform_(0.5, 2)
            branch.norm.weight.uniform_(0.5, 2)
    old = copy.deepcopy(head)
    state = head.state_dict()
    for index, branch in enumerate(old.branches):  # the old layout: a conv with a bias
        old_conv = nn.Conv2d(branch.conv.in_channels, branch.conv.out_channels, 1)
        old_conv.weight.data.copy_(branch.conv.weight.view_as(old_conv.weight))
        old_conv.bias.data.normal_()
        branch.conv = old_conv
        state[f"branches.{index}.conv.bias"] = old_conv.bias.detach().clone()
    layers = [torch.randn(2, 4, 4, 4), torch.randn(2, 6, 2, 2)]
    with torch.no_grad():
        expected = old(layers)
        assert (expected - head(layers)).abs().max() > 1e-2  # the bias matters
        head.load_state_dict(state)
        torch.testing.assert_close(head(layers), expected, rtol=0, atol=1e-5)
