"""Pass counts measured while a method runs, so the reported cost is what ran on any backbone path.

:func:`count_passes` hooks the entry and the exit of every way into the frozen network:

* the torch.fx **body** (input -> target layer): images entering it ran the layers from the
  input, i.e. they are (the start of) a full forward;
* the torch.fx **tail** (target layer -> logits): its outputs are logits;
* the **network itself** (``backbone.model``), called directly by some methods (the full
  backward check) and by the hook fallback for every ``run``, ``body`` and ``tail``: each call
  is a full forward ending in logits.

From these, with the definitions of :class:`~lcam.explanation.Explanation`: forward passes =
logits computed, tail passes = logits computed - full forwards started, backward passes =
gradient batches arriving at the logits, and backward passes that reached the image = gradient
batches arriving at the network's input. Under the hook fallback a tail re-runs the whole network,
so it counts as a full forward there, and ``body`` alone costs a full forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from lcam.backbone import FrozenBackbone

__all__ = ["PassCount", "count_passes"]


@dataclass
class PassCount:
    """Images counted at the network's entry and exit while :func:`count_passes` was active.

    Attributes:
        full: images that entered the network at its input.
        logits: images whose logits ``(K,)`` were computed.
        backward: gradient rows that arrived at the logits.
        backward_to_input: gradient rows that arrived at the network's input.
        counting: whether arrivals still count (``False`` once the block has ended).
    """

    full: int = 0
    logits: int = 0
    backward: int = 0
    backward_to_input: int = 0
    counting: bool = True
    _watched: dict[int, Tensor] = field(default_factory=dict, repr=False)

    def per_image(self, batch: int) -> dict[str, float]:
        """Counts per explained image of a batch of ``batch``: ``forward_passes``,
        ``tail_passes``, ``backward_passes`` and ``backward_to_input``."""
        return {
            "forward_passes": self.logits / batch,
            "tail_passes": max(self.logits - self.full, 0) / batch,
            "backward_passes": self.backward / batch,
            "backward_to_input": self.backward_to_input / batch,
        }

    def watch(self, tensor: Tensor, name: str) -> None:
        """Add the rows of every gradient that arrives at ``tensor`` to the count ``name``
        (once per tensor, however many calls it entered)."""
        if not tensor.requires_grad or id(tensor) in self._watched:
            return
        self._watched[id(tensor)] = tensor  # kept alive, so the id is not reused

        def add(grad: Tensor) -> None:
            if self.counting:
                setattr(self, name, getattr(self, name) + grad.shape[0])

        tensor.register_hook(add)


def _logits_of(output: Any) -> Tensor | None:
    """The logits tensor of a network's output (a tensor, or an object with ``.logits``)."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    return logits if isinstance(logits, Tensor) else None


@contextlib.contextmanager
def count_passes(backbone: FrozenBackbone) -> Iterator[PassCount]:
    """Count the passes through ``backbone`` inside the block (see the module docstring).

    The hooks are removed on exit, also when an exception is raised; gradients arriving after
    the block are not counted.
    """
    count = PassCount()

    def enter(_module: nn.Module, args: tuple[Any, ...]) -> None:
        if count.counting and args and isinstance(args[0], Tensor):
            count.full += args[0].shape[0]
            count.watch(args[0], "backward_to_input")

    def leave(_module: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
        logits = _logits_of(output)
        if count.counting and logits is not None:
            count.logits += logits.shape[0]
            count.watch(logits, "backward")

    body, tail = backbone.body_graph, backbone.tail_graph
    handles = [
        backbone.model.register_forward_pre_hook(enter),
        backbone.model.register_forward_hook(leave),
    ]
    try:
        if body is not None and tail is not None:  # the torch.fx split
            handles.append(body.owning_module.register_forward_pre_hook(enter))
            handles.append(tail.owning_module.register_forward_hook(leave))
        yield count
    finally:
        count.counting = False
        for handle in handles:
            handle.remove()
