"""The hook fallback for models torch.fx cannot trace (data-dependent control flow).

Without a graph there is no tail to resume from, so the split is emulated with forward hooks on
the target call sites:

- ``run(x)`` is one normal forward whose hooks capture the target outputs (same cost as the fx
  path);
- ``tail(features, x)`` re-runs the **whole** network on ``x`` with a hook that substitutes
  ``features`` for the split layer's output: the layers after the target see the given features,
  as on the fx path, but every layer before it runs again, so a tail costs a full forward.

The input ``x`` travels as the one "skip" of the split (``BackboneOutput.skips == (x,)``), so
callers that pass skips back to ``tail`` (feature masking, Score-CAM-style channel loops) work
unchanged.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lcam.backbone.targets import CallSite, call_hooks, parse_target, replace_element

__all__ = ["HookSplit", "warn_fallback"]

_WARNED: set[str] = set()


def warn_fallback(model: nn.Module, reason: str) -> None:
    """Warn once per model class that the hook fallback is in use, and what it costs."""
    name = type(model).__name__
    if name in _WARNED:
        return
    _WARNED.add(name)
    warnings.warn(
        f"torch.fx cannot trace {name} ({reason}); using the hook fallback: features come from "
        "hooks on one normal forward, but every tail() (feature masking, Score-CAM/Ablation-CAM "
        "channel passes, gradients from the target layer) re-runs the whole network instead of "
        "only the layers after the target layer",
        RuntimeWarning,
        stacklevel=3,
    )


def _route_message(layer: str, where: str) -> str:
    return (
        f"target layer {layer!r} did not run on the whole of {where}: the model sends some "
        "inputs through other modules (data-dependent routing), so its features are missing "
        "for them. Pass target_layer= with layers every input passes through (before the "
        "routing or after the routes join)"
    )


class HookSplit:
    """Body/tail of a model by forward hooks (see the module docstring).

    A model that routes inputs between modules (``if x.mean() > 0: a(x) else b(x)``) may not
    call a target layer for every input: each layer is checked on every probe input, and one
    that some probe does not reach is refused here, naming it; a forward that still misses a
    layer raises the same explanation instead of returning features of another image.

    Args:
        model: the frozen network.
        target_layers: module or call-site names (fx node names need a traceable model).
        example: a normalised input ``(1, 3, H, W)``, run once to find the call that runs last
            (the split layer).
        others: more normalised probe inputs (a black and a white image), on which every
            target layer must run once too.
        elements: for each target layer, the element of its list/tuple output that holds the
            features (``None`` for a tensor output).
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[str],
        example: Tensor,
        others: Sequence[Tensor] = (),
        elements: Sequence[int | None] | None = None,
    ) -> None:
        modules = dict(model.named_modules())
        sites: list[CallSite] = []
        for layer in target_layers:
            site = parse_target(layer, modules)
            if site is None:
                raise ValueError(
                    f"target layer {layer!r} is not a module of {type(model).__name__} (graph "
                    "node names need a model torch.fx can trace)"
                )
            sites.append(site)
        self.model, self.sites, self.target_layers = model, sites, tuple(target_layers)
        self.elements = tuple(elements) if elements is not None else (None,) * len(sites)
        for probe, inputs in enumerate([example, *others]):
            order: list[int] = []
            with (
                torch.no_grad(),
                call_hooks(model, sites, lambda i, _out, order=order: order.append(i)),
            ):
                model(inputs)
            for position, (layer, site) in enumerate(zip(target_layers, sites, strict=True)):
                runs = order.count(position)
                if runs == 0:
                    raise ValueError(_route_message(layer, f"probe image {probe}"))
                if runs != 1:
                    raise ValueError(
                        f"target layer {layer!r} produced {runs} outputs in one forward; name "
                        f"one call as '{site[0]}#k' (k counts calls from 0)"
                    )
            if probe == 0:
                self.split_index = order[-1]
        self.split_layer = self.target_layers[self.split_index]

    def run(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, ...], Tensor]:
        """One forward of normalised ``x``: (split-layer output, all target outputs, logits)."""
        captured: dict[int, Tensor] = {}

        def capture(index: int, output: Any) -> Any:
            element = self.elements[index]
            value = output if element is None else output[element]
            if isinstance(value, Tensor) and len(value) != len(x):
                return None  # a call on part of the batch (per-image routing): not this layer
            captured[index] = value
            if not isinstance(value, Tensor):
                return None  # a list output before its element is chosen (a probe)
            # the model's later in-place ops must not touch what we return
            copied = value.clone()
            return copied if element is None else replace_element(output, element, copied)

        with call_hooks(self.model, self.sites, capture):
            logits = self.model(x)
        missing = [self.target_layers[i] for i in range(len(self.sites)) if i not in captured]
        if missing:
            raise ValueError(_route_message(missing[0], "this batch"))
        layers = tuple(captured[i] for i in range(len(self.sites)))
        return layers[self.split_index], layers, logits

    def tail(self, features: Tensor, x: Tensor) -> Tensor:
        """Logits of the forward of ``x`` with the split layer's output replaced by ``features``
        (image for image: ``features[i]`` goes with ``x[i]``)."""
        if len(features) != len(x):
            raise ValueError(
                f"the hook fallback's tail needs the input of every feature map: {len(features)} "
                f"feature maps for {len(x)} inputs"
            )
        split = self.split_index

        element = self.elements[split]

        def substitute(_index: int, output: Any) -> Any:
            value = output if element is None else output[element]
            if value.shape != features.shape:
                raise ValueError(
                    f"features of shape {tuple(features.shape)} cannot replace the output "
                    f"{tuple(value.shape)} of {self.split_layer!r}"
                )
            new = features.to(value.dtype).clone()
            return new if element is None else replace_element(output, element, new)

        with call_hooks(self.model, self.sites[split : split + 1], substitute):
            return self.model(x)
