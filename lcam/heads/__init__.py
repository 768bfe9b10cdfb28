"""Registry of learned attention heads, by name."""

from __future__ import annotations

from lcam.heads.lcam import LCAMFmHead, LCAMHead, LCAMImgHead

__all__ = ["HEADS", "LCAMFmHead", "LCAMHead", "LCAMImgHead", "build_head"]

HEADS: dict[str, type[LCAMHead]] = {"lcam_fm": LCAMFmHead, "lcam_img": LCAMImgHead}


def build_head(name: str, in_channels: int, num_classes: int) -> LCAMHead:
    """Instantiate the head registered as ``name`` for ``C = in_channels`` and ``K`` classes."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose one of {', '.join(HEADS)}")
    return HEADS[name](in_channels, num_classes)
