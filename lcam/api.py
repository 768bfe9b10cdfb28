"""Building, saving and loading learned explainers.

A checkpoint is data, never code: everything is read with ``torch.load(weights_only=True)``.
Two files are understood: Lightning training checkpoints written by :class:`lcam.LCAMModule` and
explainer files written by :func:`save_explainer` (head and backbone weights plus metadata). Both
carry an ``"lcam"`` metadata entry and a ``"state_dict"``.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any, Literal

import torch

from lcam._io import atomic_write, load_data
from lcam.backbone import FrozenBackbone
from lcam.backbone.build import check_model_trusted
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
CLASS_EXAMPLES = "class_examples"  # LearnedExplainer's buffer of training counts
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
    """An untrained one-pass explainer on ``backbone`` with the head registered as ``head``.

    The explainer gets its own :meth:`~lcam.backbone.FrozenBackbone.view` of the backbone (the
    network and its weights are shared, not copied): a head that needs other layers (TAME's
    three stages) splits its view there, and ``backbone`` and every explainer built on it
    before or after keep computing what they did.
    """
    return LearnedExplainer(backbone.view(), head, map_activation=map_activation)


def _installed_version() -> str:
    # Read from the installed distribution: importing ``lcam`` (layer 7) here would be a cycle.
    try:
        return importlib.metadata.version("lcam")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def explainer_metadata(explainer: LearnedExplainer) -> dict[str, Any]:
    """Plain-data description from which :func:`load_explainer` rebuilds ``explainer``."""
    return {
        "format": FORMAT_VERSION,
        "lcam_version": _installed_version(),
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
    """Write head and backbone weights with their metadata to ``path`` (atomically, durably)."""
    state = {STATE_PREFIX + key: value for key, value in explainer.state_dict().items()}
    payload = {"lcam": explainer_metadata(explainer), "state_dict": state}
    return atomic_write(path, lambda temporary: torch.save(payload, temporary))


def load_explainer(
    path: str | Path, device: str | torch.device = "auto", *, trust_model_code: bool = False
) -> LearnedExplainer:
    """Load a trained explainer from a Lightning checkpoint or an explainer file.

    The checkpoint is read as data; the backbone it names is built only if it is a torchvision
    name, ``timm/<name>``, ``hf/<folder>`` or a model bundled in ``lcam.models`` unless
    ``trust_model_code`` says that importing the class path it names is wanted.

    Args:
        path: file written by training (``*.ckpt``) or by :func:`save_explainer`.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ...
        trust_model_code: allow building a backbone from any class path the checkpoint names
            (this imports and runs that module's code).

    Returns:
        The explainer in eval mode on ``device``.

    Raises:
        lcam.backbone.build.UntrustedModelError: (a ``ValueError``) the checkpoint names another
            class path and ``trust_model_code`` is ``False``; nothing was imported.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    checkpoint = load_data(path, "an lcam checkpoint")
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
    check_model_trusted(str(spec["model"]), trust_model_code, source=f"checkpoint {str(path)!r}")
    backbone = FrozenBackbone(
        spec["model"],
        num_classes=spec["num_classes"],
        target_layer=spec["target_layer"],
        input_size=spec["input_size"],
        mean=spec["mean"],
        std=spec["std"],
        class_names=meta.get("class_names"),
        token_weighting=spec.get("token_weighting", False),
        layout=spec.get("layout"),
        num_prefix_tokens=spec.get("num_prefix_tokens"),
        grid=spec.get("grid"),
        output=spec.get("output"),
    )
    backbone.spec["weights"] = spec["weights"]
    explainer = build_explainer(backbone, meta["head"], map_activation=meta["map_activation"])
    state = {
        key[len(STATE_PREFIX) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(STATE_PREFIX)
    }
    # Files written before the training counts existed load with the counts unknown (zeros).
    state.setdefault(CLASS_EXAMPLES, explainer.class_examples)
    try:
        explainer.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(
            f"{str(path)!r} does not fit {spec['model']} with {spec['num_classes']} classes at "
            f"{spec['target_layer']!r}: {error}"
        ) from error
    return explainer.to(resolve_device(device)).eval()
