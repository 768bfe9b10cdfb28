"""Explainers by name: ``get_explainer("gradcam", backbone, **options)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from lcam.backbone import FrozenBackbone
from lcam.explainers.base import Explainer

__all__ = ["EXPLAINERS", "get_explainer", "register_explainer"]

EXPLAINERS: dict[str, type[Explainer]] = {}
ExplainerType = TypeVar("ExplainerType", bound=type[Explainer])


def register_explainer(name: str) -> Callable[[ExplainerType], ExplainerType]:
    """Class decorator: make an explainer available as ``name`` (also sets its ``name``)."""

    def register(cls: ExplainerType) -> ExplainerType:
        if name in EXPLAINERS:
            raise ValueError(f"explainer {name!r} is registered twice")
        cls.name = name
        EXPLAINERS[name] = cls
        return cls

    return register


def get_explainer(name: str, backbone: FrozenBackbone, **options: Any) -> Explainer:
    """Instantiate the explainer registered as ``name`` on ``backbone`` with its ``options``."""
    if name not in EXPLAINERS:
        raise ValueError(
            f"unknown explainer {name!r}; choose one of {', '.join(sorted(EXPLAINERS))}"
        )
    return EXPLAINERS[name](backbone, **options)
