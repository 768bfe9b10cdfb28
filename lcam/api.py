"""Building, saving and loading learned explainers.

A checkpoint is data, never code: everything is read with ``torch.load(weights_only=True)``.
Two files are understood: Lightning training checkpoints written by :class:`lcam.LCAMModule` and
explainer files written by :func:`save_explainer` (head and backbone weights plus metadata). Both
carry an ``"lcam"`` metadata entry and a ``"state_dict"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

from lcam.backbone import FrozenBackbone
from lcam.explainers.learned import LearnedExplainer
from lcam.heads import LCAMHead

__all__ = [
    "build_explainer",
    "describe_mismatch",
    "explainer_metadata",
    "load_explainer",
    "resolve_device",
    "save_explainer",
]

STATE_PREFIX = "explainer."
FORMAT_VERSION = 1


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_explainer(
    backbone: FrozenBackbone,
    head: str | LCAMHead = "lcam_fm",
    map_activation: Literal["sigmoid", "logit"] = "sigmoid",
) -> LearnedExplainer:
    """An untrained one-pass explainer on ``backbone`` with the head registered as ``head``."""
    return LearnedExplainer(backbone, head, map_activation=map_activation)


def explainer_metadata(explainer: LearnedExplainer) -> dict[str, Any]:
    """Plain-data description from which :func:`load_explainer` rebuilds ``explainer``."""
    from lcam import __version__

    return {
        "format": FORMAT_VERSION,
        "lcam_version": __version__,
        "head": explainer.name,
        "map_activation": explainer.map_activation,
        "backbone": dict(explainer.backbone.spec),
        "class_names": explainer.backbone.class_names,
    }


COMPARED_KEYS = ("model", "num_classes", "target_layer", "input_size", "token_weighting")


def describe_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two explainer metadata dicts, as ``"key: saved X, now Y"`` lines."""
    lines = []
    if saved.get("head") != current.get("head"):
        lines.append(f"head: checkpoint {saved.get('head')!r}, now {current.get('head')!r}")
    for key in COMPARED_KEYS:
        old, new = saved["backbone"].get(key), current["backbone"].get(key)
        if old != new:
            lines.append(f"{key}: checkpoint {old!r}, now {new!r}")
    return lines


def save_explainer(explainer: LearnedExplainer, path: str | Path) -> Path:
    """Write head and backbone weights with their metadata to ``path`` (atomically)."""
    path = Path(path)
    state = {STATE_PREFIX + key: value for key, value in explainer.state_dict().items()}
    temporary = path.with_name(path.name + ".partial")
    torch.save({"lcam": explainer_metadata(explainer), "state_dict": state}, temporary)
    temporary.replace(path)
    return path


def load_explainer(path: str | Path, device: str | torch.device = "auto") -> LearnedExplainer:
    """Load a trained explainer from a Lightning checkpoint or an explainer file.

    Args:
        path: file written by training (``*.ckpt``) or by :func:`save_explainer`.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ...

    Returns:
        The explainer in eval mode on ``device``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # refused unpickling or not a torch file: say so, keep the cause
        raise ValueError(
            f"{str(path)!r} is not an lcam checkpoint (loading it as data with "
            f"weights_only=True failed: {error})"
        ) from error
    if (
        not isinstance(checkpoint, dict)
        or "lcam" not in checkpoint
        or "state_dict" not in checkpoint
    ):
        raise ValueError(
            f"{str(path)!r} is not an lcam checkpoint: it has no 'lcam' metadata and state_dict"
        )
    meta = checkpoint["lcam"]
    spec = meta["backbone"]
    backbone = FrozenBackbone(
        spec["model"],
        num_classes=spec["num_classes"],
        target_layer=spec["target_layer"],
        input_size=spec["input_size"],
        mean=spec["mean"],
        std=spec["std"],
        class_names=meta.get("class_names"),
        token_weighting=spec.get("token_weighting", False),
    )
    backbone.spec["weights"] = spec["weights"]
    explainer = build_explainer(backbone, meta["head"], map_activation=meta["map_activation"])
    state = {
        key[len(STATE_PREFIX) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(STATE_PREFIX)
    }
    try:
        explainer.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(
            f"{str(path)!r} does not fit {spec['model']} with {spec['num_classes']} classes at "
            f"{spec['target_layer']!r}: {error}"
        ) from error
    return explainer.to(resolve_device(device)).eval()
