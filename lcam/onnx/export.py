"""Export of a trained one-pass explainer to one ONNX graph (see :mod:`lcam.onnx`)."""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from lcam._io import atomic_write
from lcam.api import explainer_metadata
from lcam.explainers.learned import LearnedExplainer
from lcam.onnx.format import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, require_package

__all__ = ["export_onnx"]


class _ExportGraph(nn.Module):
    """``images -> (logits, maps)``: the explainer's single pass as one traceable module."""

    def __init__(self, explainer: LearnedExplainer) -> None:
        super().__init__()
        self.explainer = explainer

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        output, maps = self.explainer.class_maps(images)
        return output.logits, self.explainer.activate(maps)


def export_onnx(
    explainer: LearnedExplainer,
    path: str | Path,
    *,
    opset: int = 17,
    image_size: int | None = None,
) -> Path:
    """Export ``explainer`` to an ONNX file at ``path`` (written atomically).

    Args:
        explainer: a (trained) one-pass explainer; exported on its current device and dtype
            (float32 expected), in eval mode; its modules' train/eval modes are left as they were.
        path: the ``.onnx`` file to write; its folder is created.
        opset: ONNX opset version for the classic exporter.
        image_size: side ``H = W`` of the square images the graph accepts; default: the
            backbone's ``input_size``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ImportError: the ``onnx`` package is not installed.
        TypeError: ``explainer`` is not a :class:`~lcam.explainers.learned.LearnedExplainer`.
        ValueError: ``image_size`` is not a positive integer.
    """
    onnx = require_package("onnx", "ONNX export")
    if not isinstance(explainer, LearnedExplainer):
        raise TypeError(
            "only a LearnedExplainer (trained head) can be exported, got "
            f"{type(explainer).__name__}"
        )
    size = explainer.backbone.input_size if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"image_size must be a positive int, got {size!r}")
    path = Path(path)
    # torch.onnx.export switches the wrapper to eval mode and afterwards calls .train(mode it had)
    # on it, recursively: a fresh wrapper would leave a trained head (BatchNorm!) in training
    # mode. Export in eval mode and give every module its own mode back.
    modes = {module: module.training for module in explainer.modules()}
    graph = _ExportGraph(explainer).eval()
    # Batch 2, so that no batch size of 1 is baked into the graph; own generator: the global RNG
    # state of the caller is not touched.
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(2, 3, size, size, generator=generator).to(explainer.device)
    buffer = io.BytesIO()
    batch = {0: "batch"}
    try:
        with torch.no_grad():
            feature_size = list(graph(example)[1].shape[-2:])
        with warnings.catch_warnings():
            # The TorchScript exporter is chosen on purpose (no onnxscript dependency).
            for message in ("You are using the legacy TorchScript", "The feature will be removed"):
                warnings.filterwarnings("ignore", message, DeprecationWarning)
            torch.onnx.export(
                graph,
                (example,),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes={name: batch for name in (INPUT_NAME, *OUTPUT_NAMES)},
                do_constant_folding=True,
            )
    finally:
        for module, training in modes.items():
            module.training = training
    model = onnx.load_from_string(buffer.getvalue())
    metadata = explainer_metadata(explainer)
    # The training counts travel with the file, so the exported explainer flags untrained classes.
    metadata["class_examples"] = explainer.class_examples.tolist()
    metadata["onnx"] = {
        "image_size": size,
        "feature_size": feature_size,
        "opset": opset,
        "input": INPUT_NAME,
        "outputs": list(OUTPUT_NAMES),
        "torch_version": torch.__version__,
    }
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.checker.check_model(model)
    return atomic_write(path, lambda temporary: onnx.save_model(model, os.fspath(temporary)))
