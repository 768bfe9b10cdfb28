"""What one process and many share: the options of a job, its loader and its batch step."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader

from lcam.explainers.base import Explainer
from lcam.explanation import Explanation
from lcam.inference.decode import ImageFiles, collate_images
from lcam.inference.files import ImageFile
from lcam.viz import Colormap

__all__ = [
    "DEFAULTS",
    "InferenceOptions",
    "Precision",
    "autocast",
    "explain_batch",
    "make_loader",
    "prepare_model",
]

Precision = Literal["32", "bf16", "16"]


@dataclass(frozen=True)
class InferenceOptions:
    """The options of a batch job, the same for one process and many.

    Attributes:
        target: class index to explain in every image; ``None`` for the predicted class.
        image_size: side the images are resized to (whole image, no crop); ``None``: the
            backbone's ``input_size``.
        batch_size, num_workers: loader settings (per process; workers decode images).
        overwrite: redo images whose outputs are already complete.
        progress: show a progress bar.
        precision: ``"32"``, or ``"bf16"`` / ``"16"`` to run the model under autocast.
        channels_last: feed images in channels-last memory format (convert the model first
            with :func:`prepare_model`).
        colormap: the overlays' colour map (:data:`lcam.viz.COLORMAPS`).
    """

    target: int | None = None
    image_size: int | None = None
    batch_size: int = 16
    num_workers: int = 2
    overwrite: bool = False
    progress: bool = True
    precision: Precision = "32"
    channels_last: bool = False
    colormap: Colormap = "viridis"


DEFAULTS = InferenceOptions()


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """Autocast context for ``"bf16"`` / ``"16"``; a no-op for ``"32"``."""
    if precision == "32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)


def prepare_model(
    explainer: Explainer, *, channels_last: bool = False, compile: bool = False
) -> None:
    """Convert the explainer's backbone to channels-last and/or compile its graphs, in place."""
    if channels_last:
        explainer.to(memory_format=torch.channels_last)
    if compile:
        explainer.backbone.compile_graphs()


def _leave_interrupts_to_the_main_process(worker_id: int) -> None:
    """Decoding workers ignore Ctrl-C (a terminal sends it to the whole process group): the
    main process stops after the batch in flight, which a worker that died would fail."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(
    files: Sequence[ImageFile], explainer: Explainer, options: InferenceOptions, pin_memory: bool
) -> DataLoader:
    """The loader of ``files``: batches from :func:`~lcam.inference.decode.collate_images`."""
    return DataLoader(
        ImageFiles(files, options.image_size or explainer.backbone.input_size),
        batch_size=options.batch_size,
        num_workers=options.num_workers,
        collate_fn=collate_images,
        pin_memory=pin_memory,
        worker_init_fn=_leave_interrupts_to_the_main_process,
    )


def explain_batch(
    explainer: Explainer, batch: dict[str, Any], options: InferenceOptions
) -> Explanation | None:
    """The explanation of a collated batch's readable images (``None`` if it has none), with
    autocast and memory format as ``options`` say; autograd on (gradient methods need it, also
    under Lightning's predict, which runs under ``no_grad``)."""
    if batch["image"] is None:
        return None
    images = batch["image"]
    if options.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.enable_grad(), autocast(explainer.device, options.precision):
        return explainer.explain(images, options.target)
