"""Registry of learned attention heads, by name."""

from __future__ import annotations

from lcam.backbone import FrozenBackbone
from lcam.heads.lcam import LCAMFmHead, LCAMHead, LCAMImgHead
from lcam.heads.tame import TAMEHead, default_tame_layers

__all__ = [
    "HEADS",
    "LCAMFmHead",
    "LCAMHead",
    "LCAMImgHead",
    "TAMEHead",
    "build_head",
    "default_tame_layers",
]

HEADS: dict[str, type[LCAMHead]] = {
    "lcam_fm": LCAMFmHead,
    "lcam_img": LCAMImgHead,
    "tame": TAMEHead,
}


def build_head(name: str, backbone: FrozenBackbone) -> LCAMHead:
    """Instantiate the head registered as ``name``, sized for ``backbone``.

    A multi-layer head (``tame``) given a single-layer backbone switches the backbone to its
    default layers (see :func:`default_tame_layers`).
    """
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose one of {', '.join(HEADS)}")
    return HEADS[name].for_backbone(backbone)
