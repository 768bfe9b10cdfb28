"""Batch normalisation over the global batch of a data-parallel run, on any device.

Plain :class:`torch.nn.BatchNorm2d` normalises a training batch with the statistics of the images
*this process* holds: under DDP with 2 processes each of 8 images, a head's branch sees other
means and variances than the single-process run with the same 16 images, and the trained heads
part (measured on TAME: 0.93 apart after one step). :class:`torch.nn.SyncBatchNorm` fixes this on
GPUs only (it refuses CPU tensors), so DDP on CPU (gloo) would still split the statistics.

:class:`GlobalBatchNorm2d` is a ``BatchNorm2d`` (same parameters, buffers and state-dict keys,
so checkpoints load either way) whose training-mode statistics are the global batch's: the
per-process sums are added with a differentiable ``all_reduce``, so the forward pass, the
gradients (which flow back through the sums to every process) and the running statistics are
those of one process holding the whole global batch. Outside a multi-process run, and in eval
mode, it is exactly ``BatchNorm2d``. Cost under DDP: two all-reduces of ``C + 1`` and ``C``
numbers per layer and training step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["GlobalBatchNorm2d"]


def _world_size() -> int:
    """Processes of the default group (1 when ``torch.distributed`` is not initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def _summed(values: Tensor) -> Tensor:
    """``values`` summed over every process, differentiably (the backward pass sums too)."""
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(values, op=dist.ReduceOp.SUM)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics span every process: ``(B, C, h, w)`` ->
    ``(B, C, h, w)``.

    Every process must run the layer in training mode at the same step (the sums are
    collectives), as DDP training does. Ranks may hold different numbers of images.
    """

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 - the name nn.BatchNorm2d uses
        if not self.training or _world_size() <= 1:
            return super().forward(input)
        self._check_input_dim(input)
        dims = (0, 2, 3)
        local_count = input.new_tensor([input.numel() / input.shape[1]])
        first = _summed(torch.cat([input.sum(dims), local_count]))
        count = first[-1]
        mean = first[:-1] / count
        centred = input - mean.view(1, -1, 1, 1)
        variance = _summed(centred.square().sum(dims)) / count
        if self.track_running_stats:
            self._update_running(mean.detach(), variance.detach(), count.detach())
        scale = (variance + self.eps).rsqrt()
        if self.affine:
            scale = scale * self.weight
        output = centred * scale.view(1, -1, 1, 1)
        return output + self.bias.view(1, -1, 1, 1) if self.affine else output

    @torch.no_grad()
    def _update_running(self, mean: Tensor, variance: Tensor, count: Tensor) -> None:
        """Running mean and unbiased variance ``(C,)`` as ``BatchNorm2d`` keeps them."""
        assert self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = variance * count / (count - 1).clamp(min=1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
