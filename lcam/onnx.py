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
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lcam._io import atomic_write
from lcam.api import explainer_metadata, load_explainer, resolve_device
from lcam.explainers.base import Explainer, Targets, check_images, resolve_targets
from lcam.explainers.learned import LearnedExplainer, TrainedClasses

if TYPE_CHECKING:
    import onnxruntime

__all__ = [
    "METADATA_KEY",
    "OnnxExplainer",
    "OnnxModelInfo",
    "export_onnx",
    "load_onnx_explainer",
    "main",
]

METADATA_KEY = "lcam"
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "maps")
_INSTALL_HINT = "pip install lcam[onnx]"


def _require(module: str, purpose: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs the {module!r} package, which is not installed: {_INSTALL_HINT}"
        ) from error


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
    onnx = _require("onnx", "ONNX export")
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


@dataclass(frozen=True)
class OnnxModelInfo:
    """What :func:`lcam.inference.run_inference` and ``infer.py`` read from ``explainer.backbone``.

    A read-only stand-in for :class:`~lcam.backbone.FrozenBackbone` on an exported model.

    Attributes:
        model: the classifier's name or class path.
        target_layer: the layer the head is attached to (a tuple for multi-layer heads).
        num_classes: ``K``.
        input_size: side of the square images the graph accepts (the export's ``image_size``).
        feature_size: ``(h, w)`` of the maps the graph outputs.
        class_names: names of the ``K`` classes, if known.
        weights: identity of the backbone weights, if known.
    """

    model: str
    target_layer: str | tuple[str, ...]
    num_classes: int
    input_size: int
    feature_size: tuple[int, int]
    class_names: tuple[str, ...] | None
    weights: str | None = None


def _parse_metadata(session: onnxruntime.InferenceSession) -> dict[str, Any]:
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise ValueError(
            f"the ONNX model has no {METADATA_KEY!r} metadata: it was not written by "
            "lcam.onnx.export_onnx"
        )
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError as error:
        message = f"the ONNX model's {METADATA_KEY!r} metadata is not JSON: {error}"
        raise ValueError(message) from None
    required = {"backbone", "head", "map_activation"}
    if not isinstance(metadata, dict) or not required <= set(metadata):
        raise ValueError(
            f"the ONNX model's {METADATA_KEY!r} metadata lacks {sorted(required)}: "
            "not an lcam export"
        )
    return metadata


def _training_counts(metadata: dict[str, Any], num_classes: int) -> Tensor | None:
    counts = metadata.get("class_examples")
    if counts is None:
        return None
    valid = isinstance(counts, list) and all(
        isinstance(count, int) and not isinstance(count, bool) and count >= 0 for count in counts
    )
    if not valid or len(counts) != num_classes:
        raise ValueError(
            f"the ONNX model's {METADATA_KEY!r} metadata has 'class_examples' that are not "
            f"{num_classes} counts (non-negative integers, one per class)"
        )
    return torch.tensor(counts, dtype=torch.long)


class OnnxExplainer(TrainedClasses, Explainer):
    """An exported explainer run by onnxruntime, with the interface of a torch explainer.

    An :class:`~lcam.explainers.base.Explainer` whose :meth:`compute_maps` runs the graph: its
    :meth:`explain` is the base class's, so it returns the same
    :class:`~lcam.explanation.Explanation` as the
    :class:`~lcam.explainers.learned.LearnedExplainer` it was exported from (targets resolved
    with :func:`~lcam.explainers.base.resolve_targets`, degenerate maps flagged, maps upsampled
    and min-max normalised by the same code). :func:`lcam.inference.run_inference` accepts it.

    ``name`` is the head's name (``"lcam_fm"``, ...), as for the torch explainer, so records in
    ``predictions.jsonl`` are comparable between the two (and a re-run of ``run_inference`` in
    the same output folder treats their outputs as interchangeable). ``map_activation`` is baked
    into the graph at export and read-only here. Inputs and outputs are CPU tensors, so
    ``device`` is always CPU even when the CUDA execution provider runs the graph (see
    ``providers``). ``backbone`` is an :class:`OnnxModelInfo`, not a network. Classes the head
    never trained on are flagged (``Explanation.untrained``) from the training counts the export
    stored; files exported before the counts existed flag nothing.

    Args:
        session: an ``onnxruntime.InferenceSession`` of a file written by :func:`export_onnx`.
    """

    forward_passes: float = 1.0
    backward_passes: float = 0.0

    def __init__(self, session: onnxruntime.InferenceSession) -> None:
        metadata = _parse_metadata(session)
        inputs = [node.name for node in session.get_inputs()]
        outputs = {node.name: node.shape for node in session.get_outputs()}
        if inputs != [INPUT_NAME] or set(outputs) != set(OUTPUT_NAMES):
            raise ValueError(
                f"the ONNX model has inputs {inputs} and outputs {sorted(outputs)}; expected "
                f"[{INPUT_NAME!r}] and {sorted(OUTPUT_NAMES)}"
            )
        spec = metadata["backbone"]
        layer = spec["target_layer"]
        image_shape = session.get_inputs()[0].shape
        size = metadata.get("onnx", {}).get("image_size", image_shape[-1])
        map_shape = metadata.get("onnx", {}).get("feature_size", outputs["maps"][-2:])
        names = metadata.get("class_names")
        info = OnnxModelInfo(
            model=spec["model"],
            target_layer=layer if isinstance(layer, str) else tuple(layer),
            num_classes=int(spec["num_classes"]),
            input_size=int(size),
            feature_size=(map_shape[0], map_shape[1]),
            class_names=tuple(names) if names else None,
            weights=spec.get("weights"),
        )
        super().__init__(info)  # type: ignore[arg-type]  # a description, not a FrozenBackbone
        self.session = session
        self._metadata = metadata
        self._image_shape = tuple(image_shape[-2:])
        self.name: str = metadata["head"]
        self._training_counts = _training_counts(metadata, info.num_classes)

    def training_counts(self) -> Tensor | None:
        """``(K,)`` int64 training examples per class as exported, or ``None`` (older files)."""
        return self._training_counts

    @property
    def map_activation(self) -> str:
        """``"sigmoid"`` or ``"logit"``: the activation the graph applies to the maps."""
        return self._metadata["map_activation"]

    @property
    def metadata(self) -> dict[str, Any]:
        """A copy of the lcam metadata stored in the file."""
        return json.loads(json.dumps(self._metadata))

    @property
    def device(self) -> torch.device:
        """Where :meth:`explain` takes and returns tensors: always the CPU."""
        return torch.device("cpu")

    @property
    def providers(self) -> list[str]:
        """onnxruntime execution providers of the session, in priority order."""
        return self.session.get_providers()

    def class_maps(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """One run of the graph: logits ``(B, K)`` and activated maps ``(B, K, h, w)``."""
        images = check_images(images)
        expected = self._image_shape
        if all(isinstance(side, int) for side in expected) and tuple(images.shape[-2:]) != expected:
            raise ValueError(
                f"the ONNX model takes {expected[0]}x{expected[1]} images, got "
                f"{images.shape[-2]}x{images.shape[-1]}; resize them or export with "
                "image_size= set to their size"
            )
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        logits, maps = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: array})
        return torch.from_numpy(logits), torch.from_numpy(maps)

    def compute_maps(self, images: Tensor, targets: Targets) -> tuple[Tensor, Tensor, Tensor]:
        """Raw maps ``(B, h, w)`` of the targets, logits ``(B, K)``, resolved targets ``(B,)``."""
        logits, maps = self.class_maps(images)
        resolved = resolve_targets(logits, targets)
        return maps[torch.arange(len(resolved)), resolved], logits, resolved

    def __repr__(self) -> str:
        return (
            f"OnnxExplainer(name={self.name!r}, model={self.backbone.model!r}, "
            f"num_classes={self.backbone.num_classes}, input_size={self.backbone.input_size}, "
            f"map_activation={self.map_activation!r}, providers={self.providers})"
        )


def _providers(device: str | torch.device, available: list[str]) -> list[Any]:
    if str(device) == "auto":
        use_cuda = resolve_device("auto").type == "cuda" and "CUDAExecutionProvider" in available
        device = "cuda" if use_cuda else "cpu"
    device = torch.device(device)
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type != "cuda":
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {str(device)!r}")
    if "CUDAExecutionProvider" not in available:
        raise ValueError(
            f"device {str(device)!r} needs onnxruntime's CUDAExecutionProvider, but this "
            f"onnxruntime only has {', '.join(available)} (install onnxruntime-gpu instead of "
            "onnxruntime)"
        )
    options = {"device_id": device.index or 0}
    return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]


def load_onnx_explainer(
    path: str | Path, device: str | torch.device = "auto", *, num_threads: int | None = None
) -> OnnxExplainer:
    """Open an ONNX file written by :func:`export_onnx` with onnxruntime.

    Args:
        path: the ``.onnx`` file.
        device: ``"auto"`` (CUDA when torch sees a GPU and onnxruntime has the CUDA execution
            provider, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        num_threads: onnxruntime intra-op threads; ``None`` lets onnxruntime choose.

    Raises:
        ImportError: ``onnxruntime`` is not installed.
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not an lcam export, or the device cannot be used.
    """
    ort = _require("onnxruntime", "Running an ONNX explainer")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file {str(path)!r} does not exist")
    providers = _providers(device, ort.get_available_providers())
    options = ort.SessionOptions()
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
    try:
        session = ort.InferenceSession(os.fspath(path), options, providers=providers)
    except Exception as error:  # onnxruntime raises its own types for unreadable models
        raise ValueError(f"{str(path)!r} is not a loadable ONNX model: {error}") from error
    try:
        return OnnxExplainer(session)
    except ValueError as error:
        raise ValueError(f"{str(path)!r}: {error}") from None


def main(argv: list[str] | None = None) -> int:
    """``python -m lcam.onnx --checkpoint CKPT --output model.onnx``: export a trained head."""
    parser = argparse.ArgumentParser(
        prog="python -m lcam.onnx",
        description="Export backbone + head as one ONNX graph (images -> logits, all-K maps).",
    )
    parser.add_argument("--checkpoint", required=True, help="training checkpoint or explainer file")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--image-size", type=int, default=None, help="default: the training size")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument(
        "--trust-model-code",
        action="store_true",
        help="build a backbone from any class path the checkpoint names (imports that module)",
    )
    args = parser.parse_args(argv)
    trust = {"trust_model_code": True} if args.trust_model_code else {}
    try:
        explainer = load_explainer(args.checkpoint, device="cpu", **trust)
        path = export_onnx(explainer, args.output, opset=args.opset, image_size=args.image_size)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
