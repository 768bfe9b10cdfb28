"""Batch inference in one process: :func:`run_inference` (``infer.py`` without ``--devices``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lcam._io import WRITE_ERRORS, progress
from lcam.explainers.base import Explainer
from lcam.inference.files import ImageFile
from lcam.inference.lock import FolderLock
from lcam.inference.step import DEFAULTS, InferenceOptions, Precision, explain_batch, make_loader
from lcam.inference.writer import PREDICTIONS, OutputWriteError, OutputWriter
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
    stop: Callable[[], bool] | None = None,
) -> dict[str, int]:
    """Explain ``files`` in batches and write maps, overlays and records under ``output``.

    Args:
        explainer: any explainer (also :class:`lcam.onnx.OnnxExplainer`); its device is used.
        files: inputs from :func:`~lcam.inference.files.collect_images`.
        output: output folder (created); it may be the input folder (see
            :mod:`lcam.inference.writer`: nothing but the job's own files is written over).
        target, image_size, batch_size, num_workers, overwrite: see
            :class:`~lcam.inference.step.InferenceOptions`, as are ``progress``, ``precision``,
            ``channels_last`` and ``colormap``.
        stop: asked after every batch (its outputs written and journaled); ``True`` ends the
            run there (``infer.py``: a SIGTERM or SIGINT arrived). The next run does the rest.

    Returns:
        Counts: ``{"done", "skipped", "failed"}`` (failed: unreadable or refused images); a run
        ``stop`` ended early has fewer than ``len(files)`` in all.

    Raises:
        FolderBusyError: another live run holds ``output`` (see :class:`~lcam.inference.lock.
            FolderLock`, held for the whole run); nothing was written.
        OutputWriteError: ``output`` cannot take a file (full disk, read-only, no permission);
            every output written before is complete and journaled, no partial file is left.
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
    writer = OutputWriter.for_explainer(explainer, output, target, colormap)
    complete: dict[str, Any] = {}
    try:
        with FolderLock(output) as lock:
            lock.report_takeover()
            complete, pending = writer.split_done(files, overwrite)
            writer.consolidate(files, complete)  # fold in what an interrupted run journaled
            _explain_all(explainer, pending, writer, options, output, stop)
            errors = [*writer.refused, *writer.errors]
            writer.consolidate(files, {**complete, **writer.records}, errors)
    except OSError as error:
        if error.errno not in WRITE_ERRORS:
            raise
        done = len(complete) + len(writer.records)
        raise OutputWriteError(output, error, done, len(files)) from error
    return {"done": len(writer.records), "skipped": len(complete), "failed": len(errors)}


def _explain_all(
    explainer: Explainer,
    pending: Sequence[ImageFile],
    writer: OutputWriter,
    options: InferenceOptions,
    output: Path,
    stop: Callable[[], bool] | None,
) -> None:
    """Explain and write ``pending`` batch by batch, until done or ``stop()``."""
    loader = make_loader(pending, explainer, options, explainer.device.type == "cuda")
    bar = progress(len(pending), "explaining", "img", enabled=options.progress)
    writer.open(output / PREDICTIONS)
    try:
        for batch in loader:
            writer.write_batch(batch, explain_batch(explainer, batch, options), pending)
            bar.update(len(batch["index"]) + len(batch["errors"]))
            if stop is not None and stop():
                break
        writer.close()  # the last batch's files, then its records
    finally:
        with contextlib.suppress(OSError):  # after a failed write: the first error is reported
            writer.close()
        bar.close()
