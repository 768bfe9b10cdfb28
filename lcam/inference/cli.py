"""``infer.py``: arguments, the explainer they describe, and the run (one process or many).

Exit codes: 0 every image explained, 1 some inputs failed (unreadable, or refused because an
output would overwrite a file that is not the job's: see :mod:`lcam.inference.writer`), 2 usage
errors (checked before any output is written), 3 the output folder is in use by another run or
cannot be written (full, read-only, no permission: one line names the folder, the error and the
images done), 143 / 130 stopped by SIGTERM / SIGINT after the batch in flight. After 1, 3, 143
or 130 every finished output is kept and the same command finishes the rest.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image

from lcam._io import atomic_write
from lcam.api import load_explainer, resolve_device
from lcam.backbone import FrozenBackbone
from lcam.explainers.base import Explainer
from lcam.explainers.learned import LearnedExplainer
from lcam.explainers.registry import get_explainer
from lcam.inference.distributed import LaunchError, run_distributed_inference
from lcam.inference.files import ImageFile, collect_images
from lcam.inference.local import run_inference
from lcam.inference.lock import FolderBusyError
from lcam.inference.step import InferenceOptions, prepare_model
from lcam.inference.writer import ERRORS, OutputWriteError, owned_files
from lcam.onnx import load_onnx_explainer
from lcam.training.interruption import StopSignals, exit_code
from lcam.visualise.activation_max import activation_maximisation
from lcam.viz import COLORMAPS, to_uint8

__all__ = ["build_explainer_from_args", "build_parser", "main", "parse_options", "parse_target"]


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
    parser.add_argument("--onnx", help="an exported head (python -m lcam.onnx) run on onnxruntime")
    parser.add_argument(
        "--trust-model-code",
        action="store_true",
        help="let --checkpoint build a backbone from any class path its metadata names (this "
        "imports and runs that module); without it only torchvision names, timm/..., hf/... "
        "and lcam's bundled models are built from a checkpoint",
    )
    parser.add_argument(
        "--backbone",
        help="for classic methods without a checkpoint: a torchvision model name, "
        "timm/<name>, hf/<save_pretrained folder> or a class path (package.module.Class)",
    )
    parser.add_argument(
        "--weights",
        help="with --backbone: torchvision weights name, timm pretrained tag, or a file",
    )
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
    parser.add_argument(
        "--output",
        required=True,
        help="output folder (may be the input folder: per image <name>.map.npy and "
        "<name>.overlay.png, <name> keeping the extension; no input is ever written over)",
    )
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
        "--colormap",
        choices=list(COLORMAPS),
        default="viridis",
        help="overlay colours: viridis (perceptually uniform, default) or jet (earlier versions)",
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
    trust = {"trust_model_code": True} if args.trust_model_code else {}
    explainer = load_explainer(args.checkpoint, device=device, **trust)
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
        atomic_write(
            output / f"activation_max_{unit}.png",
            lambda p, image=image: Image.fromarray(image.numpy()).save(p, format="PNG"),
        )
    print(f"wrote {len(targets)} activation maximisation images to {output}")
    return 0


def _run_one_process(
    explainer: Explainer, files: Sequence[ImageFile], output: str, options: InferenceOptions
) -> dict[str, int] | int:
    """:func:`run_inference` stopping after the batch in flight on SIGTERM / SIGINT; the counts,
    or the exit code of a run that stopped early (reported on stderr)."""
    try:
        with StopSignals() as signals:
            counts = run_inference(
                explainer, files, output, **vars(options), stop=lambda: signals.stop
            )
    except (FolderBusyError, OutputWriteError) as error:
        print(f"infer.py: error: {error}", file=sys.stderr)
        return 3
    return _report_stop(counts, len(files), output, signals.received) or counts


def _report_stop(counts: dict[str, Any], total: int, output: str, signum: int | None) -> int:
    """The exit code of a run ``signum`` stopped before it got through its ``total`` inputs
    (reported on stderr), else 0."""
    left = total - counts["done"] - counts["skipped"] - counts["failed"]
    if not signum or left <= 0:
        return 0
    print(
        f"infer.py: stopped by {signal.Signals(signum).name}: {counts['done']} explained, "
        f"{counts['skipped']} already done, {left} left (outputs kept in {output}); run the "
        "same command again to finish",
        file=sys.stderr,
    )
    return exit_code(signum)


def _run_processes(
    explainer: Explainer,
    files: Sequence[ImageFile],
    args: argparse.Namespace,
    options: InferenceOptions,
    relaunchable: bool,
) -> dict[str, Any] | int:
    """:func:`run_distributed_inference`, every rank stopping after its batch in flight on
    SIGTERM / SIGINT; the counts, or the exit code of a run that did not finish (rank 0 reports
    it on stderr; other ranks return 0: their non-zero exit would make Lightning's launcher
    kill rank 0 while it reports)."""
    try:
        with StopSignals() as signals:
            counts = run_distributed_inference(
                explainer,
                files,
                args.output,
                devices=args.devices,
                num_nodes=args.num_nodes,
                accelerator=args.accelerator,
                strategy=args.strategy,
                relaunchable=relaunchable,
                signals=signals,
                **vars(options),
            )
    except LaunchError as error:
        print(f"infer.py: error: {error}", file=sys.stderr)
        return 2
    except (FolderBusyError, OutputWriteError) as error:
        print(f"infer.py: error: {error}", file=sys.stderr)
        return 3
    if counts["rank"] != 0:
        return 0
    return _report_stop(counts, len(files), args.output, counts["stopped"]) or counts


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``infer.py``; returns the exit code (see the module docstring)."""
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
        # What an earlier run wrote into --output is never an input (--output may be an input).
        files = collect_images(args.input, exclude=owned_files(args.output))
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
    options = InferenceOptions(
        target=target,
        image_size=args.image_size,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        precision=args.precision,
        channels_last=args.channels_last,
        colormap=args.colormap,
    )
    if not distributed:
        counts = _run_one_process(explainer, files, args.output, options)
        if isinstance(counts, int):
            return counts
        processes = ""
    else:
        relaunchable = argv is None or list(argv) == sys.argv[1:]
        counts = _run_processes(explainer, files, args, options, relaunchable)
        if isinstance(counts, int):
            return counts
        per_rank = " + ".join(map(str, counts["per_rank"]))
        processes = f" ({per_rank} by {len(counts['per_rank'])} processes)" if per_rank else ""
    print(
        f"{counts['done']} explained{processes}, {counts['skipped']} already done, "
        f"{counts['failed']} failed"
        + (f" (see {Path(args.output) / ERRORS})" if counts["failed"] else ""),
    )
    return 1 if counts["failed"] else 0
