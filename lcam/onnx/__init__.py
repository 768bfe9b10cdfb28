"""ONNX export of a trained one-pass explainer, and an onnxruntime explainer that reads it.

:func:`export_onnx` writes **one** ONNX graph of the frozen network plus the attention head::

    images (B, 3, H, W) float32 in [0, 1]  ->  logits (B, K),  maps (B, K, h, w)

The batch dimension is dynamic; ``H = W`` is fixed at export time (``image_size``, by default the
backbone's ``input_size``), because pooling layers such as VGG's ``AdaptiveAvgPool2d((7, 7))``
are exported with kernel sizes computed from the traced shape. Normalisation happens inside the
graph, as in :class:`~lcam.backbone.FrozenBackbone`. ``maps`` are the head's maps of **all** ``K``
classes after the explainer's ``map_activation`` (``sigmoid``, the trained attention, or the
pre-sigmoid ``logit`` map), at feature resolution ``(h, w)``. Choosing the class, upsampling to
the image size and min-max normalisation happen outside the graph: :class:`OnnxExplainer` is an
:class:`~lcam.explainers.base.Explainer` whose :meth:`~OnnxExplainer.compute_maps` runs the graph,
so :meth:`~lcam.explainers.base.Explainer.explain` itself (input checks, degenerate-map flags,
resizing, normalisation) turns its maps into the same :class:`~lcam.explanation.Explanation`.

The lcam metadata (:func:`lcam.api.explainer_metadata`, plus the head's per-class training counts
``"class_examples"`` and an ``"onnx"`` entry with the export settings) is stored as JSON in the
model's ``metadata_props`` under the key ``"lcam"``; an exported file is self-describing (class
names, input size, head name, the classes the head trained on).

Export needs the ``onnx`` package, running the exported file needs ``onnxruntime``
(``pip install lcam[onnx]``). The classic TorchScript-based exporter (``dynamo=False``) is used,
so ``onnxscript`` is not needed. Files are limited to 2 GB (protobuf's limit).

Modules: :mod:`~lcam.onnx.format` (names and optional packages), :mod:`~lcam.onnx.export`,
:mod:`~lcam.onnx.runtime` (the onnxruntime explainer), :mod:`~lcam.onnx.cli`.
"""

from lcam.onnx.cli import main
from lcam.onnx.export import export_onnx
from lcam.onnx.format import METADATA_KEY
from lcam.onnx.runtime import OnnxExplainer, OnnxModelInfo, load_onnx_explainer

__all__ = [
    "METADATA_KEY",
    "OnnxExplainer",
    "OnnxModelInfo",
    "export_onnx",
    "load_onnx_explainer",
    "main",
]
