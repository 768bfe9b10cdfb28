"""What every measurement group builds: a ``Case`` (the call to time) from a ``Context``."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from benchmarks.models import ModelSpec

if TYPE_CHECKING:
    from torch import Tensor, nn

    from lcam.backbone import FrozenBackbone


class NotApplicableError(Exception):
    """The method does not apply to this model (e.g. CAM on VGG-16)."""


@dataclass
class Case:
    """One measurement, ready to time."""

    call: Callable[[], Any]
    images: Tensor  # (N, 3, H, W) in [0, 1]: the images one call explains
    network: nn.Module  # the network whose passes are counted
    options: dict[str, Any] = field(default_factory=dict)
    settings: str = ""
    notes: list[str] = field(default_factory=list)
    slow: bool = False  # one image per call, warmed up with plain forwards, no tensor memory
    # The reference of the ratio (default: a plain forward of ``images``) and what it is.
    reference: Callable[[], Any] | None = None
    memory: bool = True  # measure the call's peak tensor memory (not for the slow methods)
    result: Callable[[], Any] | None = None  # returns the last Explanation (for reported passes)
    # Scaling of a reduced setting to its default: (what, factor on the part that scales with the
    # passes, fixed part of a call that does not scale (e.g. segmentation) or None).
    scale: tuple[str, float, Callable[[], Any] | None] | None = None


@dataclass
class Context:
    """What every case is built from."""

    name: str  # the model's key in MODELS
    spec: ModelSpec
    backbone: FrozenBackbone
    images: Tensor  # (B, 3, H, W) in [0, 1]
    labels: Tensor  # (B,)
    quick: bool
    owner: Any = None  # what the backbone belongs to, if not itself (a training step's module)

    @property
    def slow_images(self) -> Tensor:
        """``(1, 3, H, W)``: the one image the slow methods explain per call."""
        return self.images[:1]


def options(cls: type, overrides: dict[str, Any]) -> dict[str, Any]:
    """Every constructor option of an explainer class with its value (defaults + overrides)."""
    parameters = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, backbone
    found = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    return {**found, **overrides}


def settings(
    images: int, options: dict[str, Any], defaults: dict[str, Any], keys: Sequence[str]
) -> str:
    """The table's settings cell: images per call and the ``keys`` options, a reduced one
    followed by its default."""
    parts = [f"{images} img/call"]
    for key in keys:
        value = options[key]
        text = f"{key}={value}"
        if key in defaults and defaults[key] != value:
            text += f" (default {defaults[key]})"
        parts.append(text)
    return ", ".join(parts)


def no_grad(function: Callable[[], Any]) -> Callable[[], Any]:
    """``function`` called under ``torch.no_grad()``."""
    import torch

    def call() -> Any:
        with torch.no_grad():
            return function()

    return call


def explain_case(
    explainer: Any,
    images: Tensor,
    ctx: Context,
    options: dict[str, Any],
    defaults: dict[str, Any],
    keys: Sequence[str],
    notes: list[str],
) -> Case:
    """A case that times ``explainer.explain(images)`` and keeps its last Explanation."""
    last: dict[str, Any] = {}

    def call() -> None:
        last["explanation"] = explainer.explain(images)

    return Case(
        call,
        images,
        ctx.backbone.model,
        options=options,
        settings=settings(len(images), options, defaults, keys),
        notes=list(notes),
        result=lambda: last.get("explanation"),
    )
