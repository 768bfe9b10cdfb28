"""Measurement groups: what one (model, method) measurement calls.

Each group is one module here, holding

- ``METHODS``: its method names, in table order;
- ``build(ctx, method) -> Case``: the call to time, the network whose passes are counted, the
  reference of the ratio (default: a plain forward of the same images) and the row's notes;

and optionally

- ``SLOW``: methods that explain one image per call, warmed up with plain forwards;
- ``QUICK_SKIPPED``: methods ``--quick`` skips on the large models;
- ``unavailable(method) -> str | None``: why the method cannot run here (a missing library);
- ``setup(spec, method) -> (backbone, owner)``: a backbone other than a plain
  ``FrozenBackbone`` (a training step times the reference on its module's own backbone and
  gets the module as ``ctx.owner``).

To add a group (e.g. the torch.fx split against the hook fallback): write
``cases/<group>.py`` with these names, add it to ``GROUPS`` below under the name the CLI's
``--methods`` takes, and document its methods in ``benchmarks/README.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from benchmarks.cases import (
    attribution_peers,
    classic,
    learned,
    peers,
    pipeline,
    reference,
    training,
)
from benchmarks.cases.base import Case, Context, NotApplicableError
from benchmarks.models import MODELS, ModelSpec, build_backbone

if TYPE_CHECKING:
    from lcam.backbone import FrozenBackbone

__all__ = [
    "GROUPS",
    "METHODS",
    "SLOW",
    "Case",
    "Context",
    "NotApplicableError",
    "build_case",
    "expand_methods",
    "setup",
    "skip_reason",
]

# CLI group name -> its module, in the order of the tables (and of the group "all").
GROUP_MODULES: dict[str, ModuleType] = {
    "reference": reference,
    "lcam": learned,
    "classic": classic,
    "train": training,
    "peers": peers,
    "attribution": attribution_peers,
    "pipeline": pipeline,
}
GROUPS: dict[str, list[str]] = {name: list(m.METHODS) for name, m in GROUP_MODULES.items()}
GROUPS["all"] = [method for methods in list(GROUPS.values()) for method in methods]
METHODS = GROUPS["all"]
SLOW = set().union(*(getattr(m, "SLOW", set()) for m in GROUP_MODULES.values()))
QUICK_SKIPPED = set().union(*(getattr(m, "QUICK_SKIPPED", set()) for m in GROUP_MODULES.values()))
_MODULE_OF = {method: m for m in GROUP_MODULES.values() for method in m.METHODS}
if len(_MODULE_OF) != len(METHODS):  # a name in two groups would be measured by the first only
    raise RuntimeError("benchmarks.cases: a method name is in two groups")


def expand_methods(names: Sequence[str]) -> list[str]:
    """Method names with groups (``lcam``, ``classic``, ``peers``, ...) expanded, in order."""
    methods: list[str] = []
    for name in names:
        for method in GROUPS.get(name, [name]):
            if method not in METHODS:
                raise ValueError(
                    f"unknown method {method!r}; choose from {', '.join(METHODS)} or a group "
                    f"({', '.join(GROUPS)})"
                )
            if method not in methods:
                methods.append(method)
    return methods


def skip_reason(model: str, method: str, quick: bool) -> str | None:
    """Why ``method`` is not measured on ``model`` (``None``: it is)."""
    unavailable = getattr(_MODULE_OF[method], "unavailable", None)
    reason = unavailable(method) if unavailable is not None else None
    if reason is not None:
        return reason
    if quick and MODELS[model].large and method in QUICK_SKIPPED:
        return "skipped by --quick: C + 1 full forward passes per image; run without --quick"
    return None


def setup(spec: ModelSpec, method: str) -> tuple[FrozenBackbone, Any]:
    """The backbone ``method`` is measured on and what owns it (``None``: the backbone itself)."""
    group_setup = getattr(_MODULE_OF[method], "setup", None)
    if group_setup is not None:
        return group_setup(spec, method)
    return build_backbone(spec), None


def build_case(ctx: Context, method: str) -> Case:
    """The ``Case`` of ``method`` (raises ``NotApplicableError`` if it does not apply)."""
    return _MODULE_OF[method].build(ctx, method)
