"""Batch inference over image files: maps, overlays and predictions, resumable and atomic.

For every readable image ``<name>`` it writes ``<name>.npy`` (float32 map in [0, 1] at the image's
own resolution), ``<name>.png`` (colour overlay) and one line of ``predictions.jsonl``. Images that
cannot be read are listed in ``errors.jsonl`` with a one-line reason; every file is written under a
temporary name and renamed, so an interrupted run leaves no partial file and a re-run with the same
output folder finishes the rest.

:class:`OutputWriter` is the one implementation of "write a batch's outputs and records" and "which
images are complete", shared by the single-process loop (:func:`run_inference`) and the
multi-process Lightning prediction writer (:mod:`lcam.predict`, ``infer.py --devices N``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.io import encode_png
from tqdm.auto import tqdm

from lcam.api import load_explainer, resolve_device
from lcam.backbone import FrozenBackbone
from lcam.explainers.activation_max import activation_maximisation
from lcam.explainers.base import Explainer
from lcam.explainers.learned import LearnedExplainer
from lcam.explainers.registry import get_explainer
from lcam.export import load_onnx_explainer
from lcam.viz import overlay, to_uint8

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageFiles",
    "OutputWriter",
    "collect_images",
    "main",
    "parse_target",
    "run_inference",
]

Precision = Literal["32", "bf16", "16"]
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
PREDICTIONS = "predictions.jsonl"
ERRORS = "errors.jsonl"
# Per-rank journals of a multi-process run (predictions.rank<R>.jsonl, errors.rank<R>.jsonl).
RANK_JOURNAL = "{stem}.rank{rank}.jsonl"


@dataclass(frozen=True)
class ImageFile:
    """An input image and the output name (relative, without suffix) its files get."""

    path: Path
    name: str


def collect_images(inputs: Sequence[str | Path]) -> list[ImageFile]:
    """Expand files and folders (recursively, image suffixes only) into named inputs.

    A file given directly is named by its stem; a file found in a folder by its path relative to
    that folder, so ``a/cat.jpg`` and ``b/cat.jpg`` do not collide.

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError: a folder holds no images, or two inputs would write the same output name.
    """
    found: list[ImageFile] = []
    for entry in map(Path, inputs):
        if entry.is_dir():
            files = sorted(
                p
                for p in entry.rglob("*")
                if (p.is_file() or p.is_symlink()) and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not files:
                raise ValueError(
                    f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {str(entry)!r}"
                )
            found += [ImageFile(p, p.relative_to(entry).with_suffix("").as_posix()) for p in files]
        elif entry.exists() or entry.is_symlink():
            found.append(ImageFile(entry, entry.stem))
        else:
            raise FileNotFoundError(f"input {str(entry)!r} does not exist")
    names: dict[str, Path] = {}
    for item in found:
        if item.name in names:
            raise ValueError(
                f"{str(names[item.name])!r} and {str(item.path)!r} would both write outputs named "
                f"{item.name!r}; pass their folders instead of the files, or rename one"
            )
        names[item.name] = item.path
    return found


def read_rgb(path: Path) -> Tensor:
    """Read any PIL-readable image as ``(3, H, W)`` uint8 RGB, EXIF rotation applied.

    Grayscale, palette, RGBA (composited on black), CMYK and 16-bit images are converted.
    Decompression bombs are refused rather than allocated.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(image, dtype=np.float64)
                image = Image.fromarray((array * 255.0 / max(array.max(), 1.0)).astype(np.uint8))
            if "A" in image.getbands() or "transparency" in image.info:
                rgba = image.convert("RGBA")
                image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
            rgb = image.convert("RGB")
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)


class ImageFiles(Dataset):
    """Loads images for a batch job; a failure becomes an item with an ``error`` reason.

    Items: ``{"index", "image": (3, S, S) float in [0, 1], "original": (3, H, W) uint8}`` or
    ``{"index", "error": str}``.
    """

    def __init__(self, files: Sequence[ImageFile], image_size: int) -> None:
        self.files, self.image_size = files, image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            original = read_rgb(self.files[index].path)
        except Exception as error:  # any unreadable input is reported, never fatal to the batch
            reason = f"{type(error).__name__}: {error}".splitlines()[0]
            return {"index": index, "error": reason}
        image = F.interpolate(
            original[None].float() / 255,
            size=(self.image_size, self.image_size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )[0].clamp(0, 1)
        return {"index": index, "image": image, "original": original}


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    good = [item for item in items if "error" not in item]
    return {
        "index": [item["index"] for item in good],
        "image": torch.stack([item["image"] for item in good]) if good else None,
        "original": [item["original"] for item in good],
        "errors": [(item["index"], item["error"]) for item in items if "error" in item],
    }


def parse_target(target: str, class_names: Sequence[str] | None, num_classes: int) -> int | None:
    """``"predicted"`` -> ``None``; a class index or class name -> its index (validated)."""
    if target == "predicted":
        return None
    if target.lstrip("-").isdigit():
        index = int(target)
        if not 0 <= index < num_classes:
            raise ValueError(
                f"--target {index} does not exist: the model has {num_classes} classes"
            )
        return index
    if class_names and target in class_names:
        return list(class_names).index(target)
    known = f"one of {', '.join(class_names)}" if class_names else "an index (no class names known)"
    raise ValueError(
        f"--target {target!r} is not 'predicted', a class index or a class name ({known})"
    )


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


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    write(temporary)
    os.replace(temporary, path)


def _save_npy(array: np.ndarray, path: Path) -> None:
    with path.open("wb") as handle:
        np.save(handle, array)


def _write_outputs(map_: Tensor, original: Tensor, map_path: Path, overlay_path: Path) -> None:
    """Upsample a ``(h, w)`` map to the ``(3, H, W)`` uint8 original's size; write it as
    ``.npy`` and its colour overlay as PNG, each atomically. Runs in the writer's threads."""
    full_map = F.interpolate(map_.float()[None, None], size=original.shape[-2:], mode="bilinear")[
        0, 0
    ].clamp(0, 1)
    blended = to_uint8(overlay(original.float()[None] / 255, full_map[None]))[0]
    _atomic_write(map_path, lambda p: _save_npy(full_map.numpy(), p))
    # zlib level 1: 2x faster than the default 6 for files about 10 % larger.
    png = encode_png(blended.permute(2, 0, 1).contiguous(), compression_level=1)
    _atomic_write(overlay_path, lambda p: p.write_bytes(png.numpy().tobytes()))


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON line of ``path`` (none if it does not exist)."""
    lines: list[dict[str, Any]] = []
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line cut by a kill: redone
                lines.append(json.loads(line))
    return lines


def _read_records(path: Path) -> dict[str, dict[str, Any]]:
    """The records of a journal by image name, the last one of each name winning."""
    return {record["name"]: record for record in _read_lines(path)}


def _write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    lines = "".join(json.dumps(record) + "\n" for record in records)
    _atomic_write(path, lambda p: p.write_text(lines))


def _record(
    item: ImageFile, target: int, top: Any, row: int, class_names: Sequence[str] | None
) -> dict[str, Any]:
    def name_of(index: int) -> str | None:
        return class_names[index] if class_names else None

    return {
        "name": item.name,
        "path": str(item.path),
        "top5": [
            {"class": int(c), "name": name_of(int(c)), "probability": round(float(p), 6)}
            for p, c in zip(top.values[row], top.indices[row], strict=True)
        ],
        "target": target,
        "target_name": name_of(target),
        "map": f"{item.name}.npy",
        "overlay": f"{item.name}.png",
    }


class OutputWriter:
    """Writes the outputs of explained batches and knows which images are complete.

    Shared by the single-process loop and the multi-process prediction writer, so both write the
    same files and resume the same way:

    - :meth:`completed`: records of images whose outputs exist for this method and target, read
      from ``predictions.jsonl`` and from per-rank journals an interrupted multi-process run left.
    - :meth:`consolidate`: rewrite ``predictions.jsonl`` (in input order) and ``errors.jsonl``
      atomically, then remove every per-rank journal.
    - :meth:`open` / :meth:`write_batch` / :meth:`close`: write each image's map and overlay
      atomically, then append its record to a journal (and failures to an error journal, if
      given); records and errors of this process are also kept in :attr:`records` and
      :attr:`errors`. A batch's files are written in background threads while the caller
      computes the next batch; its records are journaled once its files are in place (at the
      next :meth:`write_batch` or at :meth:`close`).

    Args:
        output: output folder.
        method: the explainer's name, stored in each record.
        requested: ``"predicted"`` or the requested class index, stored in each record.
        class_names: names of the classes, if known.
    """

    def __init__(
        self,
        output: str | Path,
        *,
        method: str,
        requested: str | int,
        class_names: Sequence[str] | None,
    ) -> None:
        self.output = Path(output)
        self.method, self.requested, self.class_names = method, requested, class_names
        self.records: dict[str, dict[str, Any]] = {}
        self.errors: list[dict[str, str]] = []
        self._journal: Any = None
        self._error_journal: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[tuple[Future, dict[str, Any]]] = []

    @classmethod
    def for_explainer(
        cls, explainer: Explainer, output: str | Path, target: int | None
    ) -> OutputWriter:
        """The writer of ``explainer``'s outputs for ``target`` (``None``: predicted class)."""
        return cls(
            output,
            method=explainer.name,
            requested="predicted" if target is None else target,
            class_names=explainer.backbone.class_names,
        )

    def split_done(
        self, files: Sequence[ImageFile], overwrite: bool = False
    ) -> tuple[dict[str, dict[str, Any]], list[ImageFile]]:
        """Records of the complete images (see :meth:`completed`) and the files still to do."""
        complete = self.completed(overwrite)
        return complete, [item for item in files if item.name not in complete]

    def rank_journal(self, stem: str, rank: int) -> Path:
        """Per-rank journal ``<stem>.rank<rank>.jsonl`` (stem ``predictions`` or ``errors``)."""
        return self.output / RANK_JOURNAL.format(stem=stem, rank=rank)

    def rank_journals(self, stem: str) -> list[Path]:
        """The per-rank journals of ``stem`` present in the output folder."""
        pattern = RANK_JOURNAL.format(stem=stem, rank="*")
        return sorted(p for p in self.output.glob(pattern) if p.name[len(stem) + 5 : -6].isdigit())

    def is_complete(self, record: dict[str, Any]) -> bool:
        """Whether ``record`` is for this method and target and both its files exist."""
        return (
            record.get("requested") == self.requested
            and record.get("method") == self.method
            and (self.output / record["map"]).is_file()
            and (self.output / record["overlay"]).is_file()
        )

    def completed(self, overwrite: bool = False) -> dict[str, dict[str, Any]]:
        """Records of the images already complete (none with ``overwrite``), by name."""
        if overwrite:
            return {}
        previous: dict[str, dict[str, Any]] = {}
        for path in [self.output / PREDICTIONS, *self.rank_journals("predictions")]:
            previous.update(_read_records(path))
        return {name: record for name, record in previous.items() if self.is_complete(record)}

    def consolidate(
        self,
        files: Sequence[ImageFile],
        records: dict[str, dict[str, Any]],
        errors: Sequence[dict[str, str]] | None = None,
    ) -> None:
        """Write ``records`` of ``files`` in input order to ``predictions.jsonl`` and ``errors``
        (if given; also an empty list over an old file) to ``errors.jsonl``, then remove the
        per-rank journals, whose records must be in ``records`` by then."""
        _write_jsonl(
            self.output / PREDICTIONS, [records[i.name] for i in files if i.name in records]
        )
        if errors is not None and (errors or (self.output / ERRORS).exists()):
            position = {str(item.path): index for index, item in enumerate(files)}
            ordered = sorted(errors, key=lambda error: position.get(error["path"], len(files)))
            _write_jsonl(self.output / ERRORS, ordered)
        for path in [*self.rank_journals("predictions"), *self.rank_journals("errors")]:
            path.unlink(missing_ok=True)

    def open(self, journal: Path, error_journal: Path | None = None, mode: str = "a") -> None:
        """Start writing: records are appended to ``journal``, failures to ``error_journal``."""
        self.output.mkdir(parents=True, exist_ok=True)
        self._journal = journal.open(mode)
        self._error_journal = error_journal.open(mode) if error_journal is not None else None
        self._pool = ThreadPoolExecutor(max_workers=2)

    def _journal_written(self) -> None:
        """Wait for the pending files; journal the record of each image whose files are in place."""
        pending, self._pending = self._pending, []
        failure: BaseException | None = None
        for future, record in pending:
            if (error := future.exception()) is not None:
                failure = failure or error
                continue
            self._journal.write(json.dumps(record) + "\n")
            self.records[record["name"]] = record
        self._journal.flush()
        if failure is not None:
            raise failure

    def close(self) -> None:
        """Finish pending writes, journal them and close the journals (safe to call twice)."""
        if self._journal is not None:
            self._journal_written()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for handle in (self._journal, self._error_journal):
            if handle is not None:
                handle.close()
        self._journal = self._error_journal = None

    def write_batch(
        self, batch: dict[str, Any], explanation: Any, items: Sequence[ImageFile]
    ) -> None:
        """Write the outputs of one collated batch (see :class:`ImageFiles`) and journal them.

        Args:
            batch: from :func:`_collate`; its ``index`` and ``errors`` index into ``items``.
            explanation: the :class:`~lcam.explanation.Explanation` of ``batch["image"]``, or
                ``None`` when the batch held no readable image.
            items: the files the batch's dataset was built on.
        """
        if self._journal is None or self._pool is None:
            raise RuntimeError("OutputWriter.write_batch before open()")
        for index, reason in batch["errors"]:
            error = {"path": str(items[index].path), "error": reason}
            self.errors.append(error)
            if self._error_journal is not None:
                self._error_journal.write(json.dumps(error) + "\n")
                self._error_journal.flush()
        self._journal_written()  # the previous batch's, written while this one was computed
        if explanation is None or not batch["index"]:
            return
        probabilities = explanation.probabilities.float().cpu()
        top = probabilities.topk(min(5, probabilities.shape[1]), dim=1)
        maps = explanation.maps.detach().float().cpu()
        targets = explanation.targets.tolist()
        for row, index in enumerate(batch["index"]):
            record = _record(items[index], targets[row], top, row, self.class_names)
            record.update(requested=self.requested, method=self.method)
            future = self._pool.submit(
                _write_outputs,
                maps[row],
                batch["original"][row],
                self.output / record["map"],
                self.output / record["overlay"],
            )
            self._pending.append((future, record))


def run_inference(
    explainer: Explainer,
    files: Sequence[ImageFile],
    output: str | Path,
    *,
    target: int | None = None,
    image_size: int | None = None,
    batch_size: int = 16,
    num_workers: int = 2,
    overwrite: bool = False,
    progress: bool = True,
    precision: Precision = "32",
    channels_last: bool = False,
) -> dict[str, int]:
    """Explain ``files`` in batches and write maps, overlays and records under ``output``.

    Args:
        explainer: any explainer; its backbone's device is used.
        files: inputs from :func:`collect_images`.
        output: output folder (created).
        target: class index to explain in every image; ``None`` for the predicted class.
        image_size: side the images are resized to (whole image, no crop); default: the
            backbone's ``input_size``.
        batch_size, num_workers: loader settings (workers decode images in parallel).
        overwrite: redo images whose outputs are already complete.
        progress: show a progress bar.
        precision: ``"32"``, or ``"bf16"`` / ``"16"`` to run the model under autocast.
        channels_last: feed images in channels-last memory format (convert the model first
            with :func:`prepare_model`).

    Returns:
        Counts: ``{"done", "skipped", "failed"}``.
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    writer = OutputWriter.for_explainer(explainer, output, target)
    complete, pending = writer.split_done(files, overwrite)
    writer.consolidate(files, complete)  # fold in what an interrupted run journaled elsewhere
    loader = DataLoader(
        ImageFiles(pending, image_size or explainer.backbone.input_size),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=explainer.device.type == "cuda",
    )
    bar = tqdm(total=len(pending), desc="explaining", unit="img", disable=not progress)
    writer.open(output / PREDICTIONS)
    try:
        for batch in loader:
            explanation = None
            if batch["image"] is not None:
                images = batch["image"]
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with autocast(explainer.device, precision):
                    explanation = explainer.explain(images, target)
            writer.write_batch(batch, explanation, pending)
            bar.update(len(batch["index"]) + len(batch["errors"]))
    finally:
        writer.close()
        bar.close()
    writer.consolidate(files, {**complete, **writer.records}, writer.errors)
    return {"done": len(writer.records), "skipped": len(complete), "failed": len(writer.errors)}


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``infer.py``."""
    parser = argparse.ArgumentParser(
        prog="infer.py",
        description=(
            "Explain images: with a trained lcam head in one forward pass each (default), or "
            "with a classic explainer on the same backbone (--method)."
        ),
    )
    parser.add_argument(
        "--method",
        default="lcam",
        help="lcam (the trained head, default), a classic explainer name (gradcam, lime, ...) or "
        "activation_max",
    )
    parser.add_argument("--checkpoint", help="training checkpoint or explainer file")
    parser.add_argument(
        "--onnx", help="an exported head (python -m lcam.export) run on onnxruntime"
    )
    parser.add_argument(
        "--backbone", help="for classic methods without a checkpoint: model name or class path"
    )
    parser.add_argument("--weights", help="with --backbone: torchvision weights name or file")
    parser.add_argument("--num-classes", type=int, help="with --backbone: number of classes")
    parser.add_argument("--target-layer", help="with --backbone: layer to explain at")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="explainer option, repeatable (e.g. --option num_samples=500); values are YAML",
    )
    parser.add_argument("--input", nargs="+", help="image files and/or folders")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument(
        "--target",
        default="predicted",
        help="'predicted' (default), a class index or a class name; for activation_max a "
        "comma-separated list",
    )
    parser.add_argument("--layer", help="activation_max: maximise channels of this layer")
    parser.add_argument(
        "--device", default="auto", help="one process: auto (default), cpu, cuda, cuda:1, ..."
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=1,
        help="processes per node; above 1, Lightning predict with one process per device, each "
        "image explained and written once (default 1: one process on --device)",
    )
    parser.add_argument(
        "--num-nodes", type=int, default=1, help="machines of a multi-process run (default 1)"
    )
    parser.add_argument(
        "--accelerator",
        choices=["auto", "cpu", "gpu"],
        default="auto",
        help="multi-process runs: the devices (default auto)",
    )
    parser.add_argument(
        "--strategy",
        choices=["auto", "ddp"],
        default="auto",
        help="multi-process runs: Lightning strategy (default auto)",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=2, help="image decoding processes")
    parser.add_argument(
        "--image-size", type=int, default=None, help="default: the backbone's input size"
    )
    parser.add_argument(
        "--map-activation",
        choices=["logit", "sigmoid"],
        default=None,
        help="lcam: explain the trained attention (sigmoid, default) or the pre-sigmoid class map",
    )
    parser.add_argument(
        "--precision",
        choices=["32", "bf16", "16"],
        default="32",
        help="run the model under bf16/fp16 autocast (GPUs; bf16 also on recent CPUs)",
    )
    parser.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone graphs")
    parser.add_argument("--overwrite", action="store_true", help="redo images already done")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``["num_samples=500", "fill=[0.5, 0.5, 0.5]"]`` -> keyword options (values read as YAML)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise ValueError(f"--option {pair!r} is not KEY=VALUE")
        options[key.strip()] = yaml.safe_load(value)
    return options


def _check_against_checkpoint(args: argparse.Namespace, spec: dict[str, Any]) -> None:
    """Refuse backbone options that contradict the checkpoint, naming each one."""
    if args.weights is not None:
        raise ValueError("--weights applies with --backbone; a checkpoint carries its weights")
    requested = {
        "model": args.backbone,
        "num_classes": args.num_classes,
        "target_layer": args.target_layer,
        "input_size": args.image_size,
    }
    mismatches = [
        f"{key}: checkpoint {spec[key]!r}, requested {value!r}"
        for key, value in requested.items()
        if value is not None and value != spec[key]
    ]
    if mismatches:
        raise ValueError(f"{args.checkpoint} does not match the options: " + "; ".join(mismatches))


def _load_checkpoint(args: argparse.Namespace, device: torch.device) -> LearnedExplainer:
    explainer = load_explainer(args.checkpoint, device=device)
    _check_against_checkpoint(args, explainer.backbone.spec)
    return explainer


def _backbone_from_args(args: argparse.Namespace) -> FrozenBackbone:
    if args.checkpoint:
        return _load_checkpoint(args, torch.device("cpu")).backbone
    if not args.backbone:
        raise ValueError(
            f"--method {args.method} needs --backbone (or a --checkpoint to take it from)"
        )
    return FrozenBackbone(
        args.backbone,
        weights=args.weights,
        num_classes=args.num_classes,
        target_layer=args.target_layer,
        input_size=args.image_size or 224,
    )


def build_explainer_from_args(args: argparse.Namespace) -> Explainer:
    """The explainer ``infer.py`` runs, on the requested device."""
    device = resolve_device(args.device)
    if args.onnx:
        if args.method != "lcam" or args.checkpoint:
            raise ValueError("--onnx runs an exported head: drop --method and --checkpoint")
        return load_onnx_explainer(args.onnx, device=device)
    if args.method == "lcam":
        if not args.checkpoint:
            raise ValueError("--method lcam needs --checkpoint (a trained head) or --onnx")
        explainer = _load_checkpoint(args, device)
        if args.map_activation:
            explainer.map_activation = args.map_activation
        return explainer
    return get_explainer(
        args.method, _backbone_from_args(args).to(device), **parse_options(args.option)
    )


def _activation_max(args: argparse.Namespace) -> int:
    backbone = _backbone_from_args(args).to(resolve_device(args.device))
    requested = [item.strip() for item in args.target.split(",")]
    if args.layer is not None:
        if not all(item.isdigit() for item in requested):
            raise ValueError(f"--target for --layer {args.layer} must be channel indices")
        targets = [int(item) for item in requested]
    else:
        targets = [parse_target(i, backbone.class_names, backbone.num_classes) for i in requested]
        if None in targets:
            raise ValueError("activation_max needs --target with class indices or names")
    images = activation_maximisation(
        backbone, targets, layer=args.layer, size=args.image_size, **parse_options(args.option)
    )
    output = Path(args.output)
    for target, image in zip(targets, to_uint8(images), strict=True):
        unit = f"{args.layer}_channel{target}" if args.layer else f"class{target}"
        _atomic_write(
            output / f"activation_max_{unit}.png",
            lambda p, image=image: Image.fromarray(image.numpy()).save(p, format="PNG"),
        )
    print(f"wrote {len(targets)} activation maximisation images to {output}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``infer.py``; returns the exit code (0: all done, 1: some inputs failed, 2: usage)."""
    args = build_parser().parse_args(argv)
    distributed = args.devices > 1 or args.num_nodes > 1
    try:
        if args.method == "activation_max":
            return _activation_max(args)
        if not args.input:
            raise ValueError("--input is required")
        if args.devices < 1 or args.num_nodes < 1:
            raise ValueError("--devices and --num-nodes must be at least 1")
        if distributed and args.onnx:
            raise ValueError("--onnx runs in one process: drop --devices / --num-nodes")
        if distributed and args.device != "auto":
            raise ValueError(
                "--device picks the device of one process; with --devices / --num-nodes use "
                "--accelerator"
            )
        files = collect_images(args.input)
        # A multi-process run loads the model on the CPU; Lightning moves it to each rank's device.
        explainer = build_explainer_from_args(
            argparse.Namespace(**{**vars(args), "device": "cpu"}) if distributed else args
        )
        target = parse_target(
            args.target, explainer.backbone.class_names, explainer.backbone.num_classes
        )
        if (args.channels_last or args.compile) and args.onnx:
            raise ValueError("--channels-last and --compile apply to PyTorch models, not --onnx")
        if not args.onnx:
            prepare_model(explainer, channels_last=args.channels_last, compile=args.compile)
    except (ValueError, FileNotFoundError) as error:
        print(f"infer.py: error: {error}", file=sys.stderr)
        return 2
    options: dict[str, Any] = {
        "target": target,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "overwrite": args.overwrite,
        "progress": not args.no_progress,
        "precision": args.precision,
        "channels_last": args.channels_last,
    }
    if not distributed:
        counts = run_inference(explainer, files, args.output, **options)
        processes = ""
    else:
        from lcam.predict import LaunchError, run_distributed_inference

        try:
            counts = run_distributed_inference(
                explainer,
                files,
                args.output,
                devices=args.devices,
                num_nodes=args.num_nodes,
                accelerator=args.accelerator,
                strategy=args.strategy,
                relaunchable=argv is None or list(argv) == sys.argv[1:],
                **options,
            )
        except LaunchError as error:
            print(f"infer.py: error: {error}", file=sys.stderr)
            return 2
        if counts["rank"] != 0:
            # Rank 0 reports the run and gives its exit code; an other rank's non-zero exit
            # would make Lightning's launcher kill rank 0 while it reports.
            return 0
        per_rank = " + ".join(map(str, counts["per_rank"]))
        processes = f" ({per_rank} by {len(counts['per_rank'])} processes)" if per_rank else ""
    print(
        f"{counts['done']} explained{processes}, {counts['skipped']} already done, "
        f"{counts['failed']} failed"
        + (f" (see {Path(args.output) / ERRORS})" if counts["failed"] else ""),
    )
    return 1 if counts["failed"] else 0
