"""Model definitions shipped with lcam (layer 1: plain torch modules, no lcam imports)."""

from lcam.models.efficientnet_lite import EfficientNetLite0
from lcam.models.tiny import TinyResNet

__all__ = ["EfficientNetLite0", "TinyResNet"]
