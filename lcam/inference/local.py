"""Batch inference in one process: :func:`run_inference` (``infer.py`` without ``--devices``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from lcam.explainers.base import Explainer
from lcam.inference.files import ImageFile
from lcam.inference.step import DEFAULTS, InferenceOptions, Precision, explain_batch, make_loader
from lcam.inference.writer import PREDICTIONS, OutputWriter
from lcam.viz import Colormap

__all__ = ["run_inference"]


def run_inference(
    explainer: Explainer,
    files: Sequence[ImageFile],
    output: str | Path,
    *,
    target: int | None = DEFAULTS.target,
    image_size: int | None = DEFAULTS.image_size,
    batch_size: int = DEFAULTS.batch_size,
    num_workers: int = DEFAULTS.num_workers,
    overwrite: bool = DEFAULTS.overwrite,
    progress: bool = DEFAULTS.progress,
    precision: Precision = DEFAULTS.precision,
    channels_last: bool = DEFAULTS.channels_last,
    colormap: Colormap = DEFAULTS.colormap,
) -> dict[str, int]:
    """Explain ``files`` in batches and write maps, overlays and records under ``output``.

    Args:
        explainer: any explainer (also :class:`lcam.onnx.OnnxExplainer`); its device is used.
        files: inputs from :func:`~lcam.inference.files.collect_images`.
        output: output folder (created); it may be the input folder (see
            :mod:`lcam.inference.writer`: nothing but the job's own files is written over).
        target, image_size, batch_size, num_workers, overwrite, progress, precision,
            channels_last, colormap: see :class:`~lcam.inference.step.InferenceOptions`.

    Returns:
        Counts: ``{"done", "skipped", "failed"}`` (failed: unreadable or refused images).
    """
    options = InferenceOptions(
        target,
        image_size,
        batch_size,
        num_workers,
        overwrite,
        progress,
        precision,
        channels_last,
        colormap,
    )
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    writer = OutputWriter.for_explainer(explainer, output, target, colormap)
    complete, pending = writer.split_done(files, overwrite)
    writer.consolidate(files, complete)  # fold in what an interrupted run journaled elsewhere
    loader = make_loader(pending, explainer, options, explainer.device.type == "cuda")
    bar = tqdm(total=len(pending), desc="explaining", unit="img", disable=not progress)
    writer.open(output / PREDICTIONS)
    try:
        for batch in loader:
            writer.write_batch(batch, explain_batch(explainer, batch, options), pending)
            bar.update(len(batch["index"]) + len(batch["errors"]))
    finally:
        writer.close()
        bar.close()
    errors = [*writer.refused, *writer.errors]
    writer.consolidate(files, {**complete, **writer.records}, errors)
    return {"done": len(writer.records), "skipped": len(complete), "failed": len(errors)}
