"""Registry of learned attention heads, by name."""

from __future__ import annotations

from lcam.backbone import FrozenBackbone
from lcam.heads.base import LCAMHead
from lcam.heads.conv import LCAMFmHead, LCAMImgHead
from lcam.heads.tame import SharedTAMEHead, TAMEHead
from lcam.heads.tame_lite import LiteTAMEHead

__all__ = ["HEADS", "build_head"]

HEADS: dict[str, type[LCAMHead]] = {
    "lcam_fm": LCAMFmHead,
    "lcam_img": LCAMImgHead,
    "tame": TAMEHead,
    "tame_shared": SharedTAMEHead,
    "tame_lite": LiteTAMEHead,
}


def build_head(name: str, backbone: FrozenBackbone) -> LCAMHead:
    """Instantiate the head registered as ``name``, sized for ``backbone``.

    A multi-layer head (``tame``, ``tame_shared``, ``tame_lite``) given a single-layer backbone
    switches the backbone to its default layers (the last three stages, see
    :meth:`FrozenBackbone.default_layers`).
    """
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose one of {', '.join(HEADS)}")
    return HEADS[name].for_backbone(backbone)
