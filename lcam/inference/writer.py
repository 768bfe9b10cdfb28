"""Output files and journals of a batch job: one writer for one process and for many.

For every explained image named ``<name>`` (see :mod:`lcam.inference.files`) the job writes
``<name>.map.npy`` (float32 map in [0, 1] at the image's own resolution), ``<name>.overlay.png``
(colour overlay) and one record in ``predictions.jsonl`` naming both; images that cannot be read
or written are listed in ``errors.jsonl`` with a one-line reason. Every file is written under a
temporary name, flushed to disk and renamed (:func:`lcam._io.atomic_write`); a record is
journaled only once its files are in place, so an interrupted run leaves no partial file and a
re-run with the same output folder finishes the rest.

**Nothing but the job's own files is ever written over.** A file belongs to the job when a
record in the folder's journals names it, or when a *claims* journal (``.claims.jsonl``, per
rank ``.claims.rank<R>.jsonl``, written before the files of a batch; kept only for files no
record names yet) does. An image whose output path is an input of the run, or an existing file
that does not belong to the job, is refused (an ``errors.jsonl`` entry) instead of written.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor
from torchvision.io import encode_png

from lcam._io import atomic_write_bytes, read_jsonl, write_jsonl
from lcam.explainers.base import Explainer
from lcam.inference.files import ImageFile, absolute, output_names
from lcam.maps import upsample_maps
from lcam.viz import Colormap, overlay, to_uint8

__all__ = [
    "ERRORS",
    "PREDICTIONS",
    "OutputWriteError",
    "OutputWriter",
    "journaled",
    "owned_files",
    "owned_names",
    "rank_journals",
    "write_outputs",
]

PREDICTIONS = "predictions.jsonl"
ERRORS = "errors.jsonl"
CLAIMS = ".claims.jsonl"
# Per-rank journals of a multi-process run (predictions.rank<R>.jsonl, errors.rank<R>.jsonl,
# .claims.rank<R>.jsonl).
RANK_JOURNAL = "{stem}.rank{rank}.jsonl"


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


class OutputWriteError(RuntimeError):
    """The output folder could not take a file (full disk, read-only, no permission): the
    message names the folder, the error and how many images were done; outputs already written
    stay complete and journaled, so the same command finishes the job once the folder is fixed.

    Attributes:
        folder, error, done, total: the folder, the ``OSError``, images complete, images in all.
    """

    def __init__(self, folder: Path, error: OSError, done: int, total: int) -> None:
        self.folder, self.error, self.done, self.total = folder, error, done, total
        reason = f"[Errno {error.errno}] {error.strerror}" if error.strerror else str(error)
        super().__init__(
            f"cannot write in {folder}: {reason}; {done} of {total} images done (kept); run "
            "the same command again once the folder can be written to finish the rest"
        )


def write_outputs(
    map_: Tensor,
    original: Tensor,
    map_path: Path,
    overlay_path: Path,
    colormap: Colormap = "viridis",
) -> None:
    """Upsample a ``(h, w)`` map to the ``(3, H, W)`` uint8 original's size; write it as
    ``.npy`` and its overlay in ``colormap`` as PNG, each atomically. Runs in the writer's
    threads."""
    full_map = upsample_maps(map_.float()[None], tuple(original.shape[-2:]))[0].clamp(0, 1)
    blended = to_uint8(overlay(original.float()[None] / 255, full_map[None], colormap=colormap))[0]
    atomic_write_bytes(map_path, _npy_bytes(full_map.numpy()))
    # zlib level 1: 2x faster than the default 6 for files about 10 % larger.
    png = encode_png(blended.permute(2, 0, 1).contiguous(), compression_level=1)
    atomic_write_bytes(overlay_path, png.numpy().tobytes())


def _record(
    item: ImageFile, row: int, explanation: Any, top: Any, class_names: Sequence[str] | None
) -> dict[str, Any]:
    """The ``predictions.jsonl`` record of row ``row`` of a batch's explanation."""

    def name_of(index: int) -> str | None:
        return class_names[index] if class_names else None

    target = int(explanation.targets[row])
    degenerate = getattr(explanation, "degenerate", None)
    untrained = getattr(explanation, "untrained", None)
    map_name, overlay_name = output_names(item.name)
    return {
        "name": item.name,
        "path": str(item.path),
        "top5": [
            {"class": int(c), "name": name_of(int(c)), "probability": round(float(p), 6)}
            for p, c in zip(top.values[row], top.indices[row], strict=True)
        ],
        "target": target,
        "target_name": name_of(target),
        "degenerate": bool(degenerate[row]) if degenerate is not None else False,
        "untrained": bool(untrained[row]) if untrained is not None else False,
        "map": map_name,
        "overlay": overlay_name,
    }


def _append(handle: Any, lines: Sequence[dict[str, Any]]) -> None:
    """Append JSON lines in one write, flushed and synced: a kill leaves whole lines."""
    if lines:
        handle.write("".join(json.dumps(line) + "\n" for line in lines))
        handle.flush()
        os.fsync(handle.fileno())


def rank_journals(output: Path, stem: str) -> list[Path]:
    """The per-rank journals ``<stem>.rank<R>.jsonl`` present in ``output``."""
    pattern = RANK_JOURNAL.format(stem=stem, rank="*")
    return sorted(p for p in output.glob(pattern) if p.name[len(stem) + 5 : -6].isdigit())


def journaled(output: Path) -> list[dict[str, Any]]:
    """Every record in ``output``'s ``predictions.jsonl`` and per-rank journals, in that order."""
    paths = [output / PREDICTIONS, *rank_journals(output, "predictions")]
    return [record for path in paths for record in read_jsonl(path)]


def owned_names(output: str | Path) -> set[str]:
    """Names (relative to ``output``) of the files that belong to the job writing there: those
    a journaled record or a claim names."""
    output = Path(output)
    names = {r[key] for r in journaled(output) for key in ("map", "overlay") if key in r}
    for path in [output / CLAIMS, *rank_journals(output, ".claims")]:
        names.update(name for line in read_jsonl(path) for name in line.get("files", ()))
    return names


def owned_files(output: str | Path) -> set[Path]:
    """Absolute paths of the files that belong to the job writing into ``output``: never inputs
    of it (see :func:`~lcam.inference.files.collect_images`'s ``exclude``)."""
    return {absolute(Path(output) / name) for name in owned_names(output)}


class OutputWriter:
    """Writes the outputs of explained batches and knows which images are complete.

    - :meth:`split_done`: records of the complete images, the images still to do, and (in
      :attr:`refused`) the images whose outputs would overwrite an input or a foreign file.
    - :meth:`consolidate`: rewrite ``predictions.jsonl`` (in input order) and ``errors.jsonl``,
      keep the claims of unrecorded files, remove every per-rank journal.
    - :meth:`open` / :meth:`write_batch` / :meth:`close`: write each image's files in background
      threads (while the caller computes the next batch), then journal its record.

    Args:
        output: output folder.
        method: the explainer's name, stored in each record.
        requested: ``"predicted"`` or the requested class index, stored in each record.
        class_names: names of the classes, if known.
        colormap: the overlays' colour map (:data:`lcam.viz.COLORMAPS`).
    """

    def __init__(
        self,
        output: str | Path,
        *,
        method: str,
        requested: str | int,
        class_names: Sequence[str] | None,
        colormap: Colormap = "viridis",
    ) -> None:
        self.output = Path(output)
        self.colormap = colormap
        self.method, self.requested, self.class_names = method, requested, class_names
        self.records: dict[str, dict[str, Any]] = {}
        self.errors: list[dict[str, str]] = []
        self.refused: list[dict[str, str]] = []
        self._handles: dict[str, Any] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[tuple[Future, dict[str, Any]]] = []

    @classmethod
    def for_explainer(
        cls,
        explainer: Explainer,
        output: str | Path,
        target: int | None,
        colormap: Colormap = "viridis",
    ) -> OutputWriter:
        """The writer of ``explainer``'s outputs for ``target`` (``None``: predicted class)."""
        return cls(
            output,
            method=explainer.name,
            requested="predicted" if target is None else target,
            class_names=explainer.backbone.class_names,
            colormap=colormap,
        )

    # -- journals ------------------------------------------------------------------------------

    def rank_journal(self, stem: str, rank: int) -> Path:
        """Per-rank journal ``<stem>.rank<rank>.jsonl`` (stem ``predictions``, ``errors`` or
        ``.claims``)."""
        return self.output / RANK_JOURNAL.format(stem=stem, rank=rank)

    def rank_journals(self, stem: str) -> list[Path]:
        """The per-rank journals of ``stem`` present in the output folder."""
        return rank_journals(self.output, stem)

    def journaled(self) -> list[dict[str, Any]]:
        """Every record in ``predictions.jsonl`` and the per-rank journals, in that order."""
        return journaled(self.output)

    def owned(self) -> set[str]:
        """Names (relative to the output folder) of the files that belong to this job."""
        return owned_names(self.output)

    def is_complete(self, record: dict[str, Any]) -> bool:
        """Whether ``record`` is for this method and target and both its files exist."""
        return (
            record.get("requested") == self.requested
            and record.get("method") == self.method
            and (self.output / record["map"]).is_file()
            and (self.output / record["overlay"]).is_file()
        )

    def completed(self, overwrite: bool = False) -> dict[str, dict[str, Any]]:
        """Records of the images already complete (none with ``overwrite``), by name; the last
        record of a name wins."""
        if overwrite:
            return {}
        records = {record["name"]: record for record in self.journaled()}
        return {name: record for name, record in records.items() if self.is_complete(record)}

    def refusal(self, item: ImageFile, inputs: set[Path], owned: set[str]) -> str | None:
        """Why ``item``'s outputs may not be written (``None`` if they may)."""
        for name in output_names(item.name):
            path = self.output / name
            if absolute(path) in inputs:
                return (
                    f"its output {str(path)!r} would overwrite an input of this run; rename "
                    "that file or choose another --output"
                )
            if (path.exists() or path.is_symlink()) and name not in owned:
                return (
                    f"its output {str(path)!r} exists and was not written by an earlier run "
                    "into this output folder; move that file or choose another --output"
                )
        return None

    def split_done(
        self, files: Sequence[ImageFile], overwrite: bool = False
    ) -> tuple[dict[str, dict[str, Any]], list[ImageFile]]:
        """Records of the complete images (see :meth:`completed`) and the files still to do;
        files whose outputs may not be written go to :attr:`refused` (see :meth:`refusal`)."""
        complete, owned = self.completed(overwrite), self.owned()
        inputs = {absolute(item.path) for item in files}
        pending: list[ImageFile] = []
        self.refused = []
        for item in files:
            if item.name in complete:
                continue
            if (reason := self.refusal(item, inputs, owned)) is not None:
                self.refused.append({"path": str(item.path), "error": reason})
            else:
                pending.append(item)
        return complete, pending

    def consolidate(
        self,
        files: Sequence[ImageFile],
        records: dict[str, dict[str, Any]],
        errors: Sequence[dict[str, str]] | None = None,
    ) -> None:
        """Write ``records`` of ``files`` in input order to ``predictions.jsonl`` and ``errors``
        (if given; also an empty list over an old file) to ``errors.jsonl``; keep in
        ``.claims.jsonl`` the files that belong to the job but no record names; then remove the
        per-rank journals, whose records must be in ``records`` by then."""
        owned = self.owned()
        ordered = [records[item.name] for item in files if item.name in records]
        write_jsonl(self.output / PREDICTIONS, ordered)
        if errors is not None and (errors or (self.output / ERRORS).exists()):
            position = {str(item.path): index for index, item in enumerate(files)}
            by_input = sorted(errors, key=lambda error: position.get(error["path"], len(files)))
            write_jsonl(self.output / ERRORS, by_input)
        recorded = {record[key] for record in ordered for key in ("map", "overlay")}
        unrecorded = sorted(n for n in owned - recorded if (self.output / n).exists())
        if unrecorded:
            write_jsonl(self.output / CLAIMS, [{"files": unrecorded}])
        else:
            (self.output / CLAIMS).unlink(missing_ok=True)
        stems = ("predictions", "errors", ".claims")
        for path in [p for stem in stems for p in self.rank_journals(stem)]:
            path.unlink(missing_ok=True)

    # -- writing -------------------------------------------------------------------------------

    def open(
        self,
        journal: Path,
        error_journal: Path | None = None,
        mode: str = "a",
        claims: Path | None = None,
    ) -> None:
        """Start writing: records are appended to ``journal``, failures to ``error_journal``,
        the output files of each batch (before they are written) to ``claims`` (default
        ``.claims.jsonl``)."""
        self.output.mkdir(parents=True, exist_ok=True)
        paths = {"records": journal, "errors": error_journal, "claims": claims}
        paths["claims"] = paths["claims"] or self.output / CLAIMS
        self._handles = {
            key: path.open(mode, encoding="utf-8") for key, path in paths.items() if path
        }
        self._pool = ThreadPoolExecutor(max_workers=2)

    def _journal_written(self) -> None:
        """Wait for the pending files; journal the record of each image whose files are in place."""
        pending, self._pending = self._pending, []
        failure: BaseException | None = None
        done = []
        for future, record in pending:
            if (error := future.exception()) is not None:
                failure = failure or error
                continue
            done.append(record)
            self.records[record["name"]] = record
        _append(self._handles["records"], done)
        if failure is not None:
            raise failure

    def close(self) -> None:
        """Finish pending writes, journal them and close the journals (safe to call twice)."""
        try:
            if "records" in self._handles:
                self._journal_written()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            for handle in self._handles.values():
                handle.close()
            self._handles = {}

    def write_batch(
        self, batch: dict[str, Any], explanation: Any, items: Sequence[ImageFile]
    ) -> None:
        """Write the outputs of one collated batch and journal them.

        Args:
            batch: from :func:`~lcam.inference.decode.collate_images`; its ``index`` and
                ``errors`` index into ``items``.
            explanation: the :class:`~lcam.explanation.Explanation` of ``batch["image"]``, or
                ``None`` when the batch held no readable image.
            items: the files the batch's dataset was built on.
        """
        if "records" not in self._handles or self._pool is None:
            raise RuntimeError("OutputWriter.write_batch before open()")
        errors = [{"path": str(items[i].path), "error": reason} for i, reason in batch["errors"]]
        self.errors += errors
        if "errors" in self._handles:
            _append(self._handles["errors"], errors)
        self._journal_written()  # the previous batch's, written while this one was computed
        if explanation is None or not batch["index"]:
            return
        probabilities = explanation.probabilities.float().cpu()
        top = probabilities.topk(min(5, probabilities.shape[1]), dim=1)
        maps = explanation.maps.detach().float().cpu()
        records = [
            _record(items[index], row, explanation, top, self.class_names)
            for row, index in enumerate(batch["index"])
        ]
        _append(
            self._handles["claims"],
            [{"files": [r[k] for r in records for k in ("map", "overlay")]}],
        )
        for row, record in enumerate(records):
            record.update(requested=self.requested, method=self.method)
            future = self._pool.submit(
                write_outputs,
                maps[row],
                batch["original"][row],
                self.output / record["map"],
                self.output / record["overlay"],
                self.colormap,
            )
            self._pending.append((future, record))
