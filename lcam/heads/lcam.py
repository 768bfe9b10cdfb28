"""Old import path of the L-CAM heads, kept for one release.

Use :mod:`lcam.heads` (or :mod:`lcam.heads.base` for :class:`LCAMHead` and
:mod:`lcam.heads.conv` for :class:`LCAMFmHead`/:class:`LCAMImgHead`).
"""

from lcam.heads.base import LCAMHead
from lcam.heads.conv import LCAMFmHead, LCAMImgHead

__all__ = ["LCAMFmHead", "LCAMHead", "LCAMImgHead"]
