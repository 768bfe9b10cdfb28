"""Views of one frozen network: other splits over the same module and weights, and the split
the gradient CAMs use (:meth:`BackboneViews.gradient_view`). Mixed into
:class:`~lcam.backbone.frozen.FrozenBackbone`."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lcam.backbone.evidence import attention_input_layer, evidence_reaches
from lcam.backbone.layout import to_grid

if TYPE_CHECKING:
    from lcam.backbone.frozen import FrozenBackbone

__all__ = ["BackboneViews"]


class BackboneViews:
    """Views and probe inputs of a :class:`~lcam.backbone.frozen.FrozenBackbone`."""

    _hints: Any
    _default_target: bool
    input_hw: tuple[int, int]
    mean: Tensor
    target_layers: tuple[str, ...]
    target_layer: str

    def _token_hints(self) -> dict[str, Any]:
        hints = self._hints
        return {
            "num_prefix_tokens": hints.num_prefix_tokens,
            "patch_size": hints.patch_size,
            "declared_prefix_tokens": hints.declared_prefix_tokens,
            "patch_grid": hints.patch_grid,
        }

    def _other_probes(self) -> list[Tensor]:
        """A black and a white image, normalised ``(1, 3, H, W)``: a model that routes inputs
        by content sends them different ways (see :mod:`lcam.backbone.fallback`)."""
        size = (1, 3, *self.input_hw)
        return [self.normalise(torch.full(size, v).to(self.mean)) for v in (0.0, 1.0)]

    def retarget(self, target_layer: Any, *, default: bool | None = None) -> None:
        raise NotImplementedError

    def normalise(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def _probe_input(self, scale: int = 1) -> Tensor:
        raise NotImplementedError

    def _grid_element(self, index: int, outputs: Any) -> int | None:
        """The element of a list/tuple layer output with the finest grid (HRNet's branch 0)."""
        areas: dict[int, int] = {}
        for position, item in enumerate(outputs):
            if isinstance(item, Tensor):
                try:
                    layout = self._infer_layout(index, item, position)
                except ValueError:
                    continue
                areas[position] = to_grid(item, layout)[0, 0].numel()
        if not areas:
            raise ValueError(
                f"target layer {self.target_layers[index]!r} returns {type(outputs).__name__} "
                "with no element that holds a spatial grid; choose another target_layer"
            )
        return max(areas, key=lambda position: (areas[position], -position))

    def _infer_layout(self, index: int, activations: Tensor, element: int | None = None) -> Any:
        raise NotImplementedError

    def view(self, target_layer: str | Sequence[str] | None = None) -> FrozenBackbone:
        """Another split of the same network, at ``target_layer`` (default: this backbone's
        layers): the module and its weights are shared, not copied, and retargeting either
        does not change what the other computes. The normalisation buffers are shared too, so
        ``.to()`` on any view (Lightning moving a trained explainer) moves the network and its
        normalisation for all of them."""
        other = copy.copy(self)  # the buffers dict stays shared (copy.copy keeps its object)
        for name in ("_parameters", "_modules"):
            other.__dict__[name] = copy.copy(self.__dict__[name])
        other.spec = dict(self.spec)
        other._warned_evidence = False
        if target_layer is None:
            other.retarget(self.target_layers, default=self._default_target)
        else:
            other.retarget(target_layer)
        return other

    def gradient_view(self) -> FrozenBackbone:
        """The backbone the gradient CAMs use: this one, unless its layer is the default and
        the class evidence does not reach its grid (a class-token transformer's last block,
        see :mod:`lcam.backbone.evidence`); then a :meth:`view` at the input of the last
        block's attention, where it does. Heads keep the default layer."""
        if not self._default_target or len(self.target_layers) != 1:
            return self
        layer = self.evidence_layer()
        return self if layer is None else self.view(layer)

    def evidence_layer(self) -> str | None:
        """A layer where the class evidence reaches the grid when it does not at this
        backbone's split layer (the input of the last attention before it); else ``None``."""
        if "_evidence_layer" in self.__dict__:
            return self.__dict__["_evidence_layer"]
        found = None
        probe = torch.rand(2, 3, *self.input_hw, generator=torch.Generator().manual_seed(0))
        probe = probe.to(self.mean)
        if not evidence_reaches(self, probe):
            layer = attention_input_layer(self.model, self._probe_input(), self.target_layer)
            if layer is not None and evidence_reaches(self.view(layer), probe):
                found = layer
        self.__dict__["_evidence_layer"] = found
        return found
