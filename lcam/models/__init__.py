"""Model definitions shipped with lcam."""

from lcam.models.tiny import TinyResNet

__all__ = ["TinyResNet"]
