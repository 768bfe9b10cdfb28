"""Forward and backward passes counted with hooks on a network's first and last layers."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor, nn


class PassCounter:
    """Counts images through the first and last layer of a network, forward and backward.

    A pass that reaches the first layer ran the whole network; one that reaches only the last
    layer ran the tail (the layers after the target layer). Backward passes are counted with a
    gradient hook on those layers' outputs. Counting is only active inside :meth:`counting`.

    Args:
        network: the network whose passes are counted (hooks stay until :meth:`remove`).
        example: one input ``(1, 3, H, W)`` of ``network``, run once to find its end layers.
    """

    def __init__(self, network: nn.Module, example: Tensor) -> None:
        import torch

        first, last = end_layers(network, example)
        self.names = (first[0], last[0])
        self.counts = {"first_fwd": 0, "last_fwd": 0, "first_bwd": 0, "last_bwd": 0}
        self.active = False
        self._torch = torch
        self.handles = [
            first[1].register_forward_hook(self._hook("first")),
            last[1].register_forward_hook(self._hook("last")),
        ]

    def _hook(self, end: str) -> Callable[..., None]:
        def count_backward(grad: Tensor) -> None:
            self.counts[f"{end}_bwd"] += int(grad.shape[0])

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if not self.active or not isinstance(output, self._torch.Tensor):
                return
            self.counts[f"{end}_fwd"] += int(output.shape[0])
            if output.requires_grad:
                output.register_hook(count_backward)

        return hook

    def counting(self) -> _Counting:
        """A context inside which passes are counted."""
        return _Counting(self)

    def per_image(self, images: int) -> dict[str, float]:
        """``forward_passes``, ``forward_tail_passes``, ``backward_passes``,
        ``backward_tail_passes`` per image."""
        c = {key: value / images for key, value in self.counts.items()}
        return {
            "forward_passes": c["first_fwd"],
            "forward_tail_passes": max(0.0, c["last_fwd"] - c["first_fwd"]),
            "backward_passes": c["first_bwd"],
            "backward_tail_passes": max(0.0, c["last_bwd"] - c["first_bwd"]),
        }

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class _Counting:
    def __init__(self, counter: PassCounter) -> None:
        self.counter = counter

    def __enter__(self) -> None:
        self.counter.active = True

    def __exit__(self, *_exc: object) -> None:
        self.counter.active = False


def end_layers(network: nn.Module, example: Tensor) -> tuple[tuple[str, Any], tuple[str, Any]]:
    """The ``(name, module)`` of the first and last leaf modules a forward of ``network`` calls
    exactly once."""
    import torch

    leaves = {m: n for n, m in network.named_modules() if n and not list(m.children())}
    order: list[Any] = []
    handles = [
        module.register_forward_hook(lambda module, _i, _o: order.append(module))
        for module in leaves
    ]
    try:
        with torch.no_grad():
            network(example)
    finally:
        for handle in handles:
            handle.remove()
    once = [module for module in order if order.count(module) == 1]
    if not once:
        raise ValueError(f"{type(network).__name__}: no layer runs exactly once per forward")
    return (leaves[once[0]], once[0]), (leaves[once[-1]], once[-1])
