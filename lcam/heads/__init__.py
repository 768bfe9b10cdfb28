"""Learned attention heads (layer 2: imports only lcam.backbone, lcam.maps and lower).

``base`` (the head interface, 1x1-convolution attention), ``conv`` (L-CAM-Fm, L-CAM-Img),
``tame`` (multi-layer fusion, and its shared-map variant), ``tame_lite`` (TAME at one
forward's cost), ``fold`` (eval-time BN folding), ``registry`` (heads by name).
"""

from lcam.heads.base import LCAMHead
from lcam.heads.conv import LCAMFmHead, LCAMImgHead
from lcam.heads.registry import HEADS, build_head
from lcam.heads.tame import SharedTAMEHead, TAMEHead, default_tame_layers
from lcam.heads.tame_lite import LiteTAMEHead

__all__ = [
    "HEADS",
    "LCAMFmHead",
    "LCAMHead",
    "LCAMImgHead",
    "LiteTAMEHead",
    "SharedTAMEHead",
    "TAMEHead",
    "build_head",
    "default_tame_layers",
]
