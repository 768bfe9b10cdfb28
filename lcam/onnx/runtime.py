"""The onnxruntime explainer that runs a file written by :func:`lcam.onnx.export_onnx`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lcam.api import resolve_device
from lcam.explainers.base import Explainer, Targets, check_images, resolve_targets
from lcam.explainers.learned import TrainedClasses
from lcam.onnx.format import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, require_package

if TYPE_CHECKING:
    import onnxruntime

__all__ = ["OnnxExplainer", "OnnxModelInfo", "load_onnx_explainer"]


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
    ort = require_package("onnxruntime", "Running an ONNX explainer")
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
