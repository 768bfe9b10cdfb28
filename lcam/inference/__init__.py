"""Batch inference (layer L6): explain image files, write maps, overlays and journals.

Files, lowest first: ``files`` (which images a job explains and its output names), ``decode``
(image files as RGB tensors; the loader's dataset), ``writer`` (output files and journals,
resumable, never writing over a file that is not the job's), ``step`` (options, loader and the
autocast + explain batch step that one process and many share), ``local`` (:func:`run_inference`,
one process), ``distributed`` (:func:`run_distributed_inference`, Lightning predict over several
processes), ``cli`` (``infer.py``). The names the old module ``lcam.inference`` had stay
importable from here.
"""

from lcam.inference.cli import build_explainer_from_args, build_parser, main, parse_target
from lcam.inference.decode import ImageFiles, collate_images, read_rgb
from lcam.inference.distributed import (
    DistributedWriter,
    ExplainModule,
    LaunchError,
    run_distributed_inference,
)
from lcam.inference.files import IMAGE_SUFFIXES, ImageFile, collect_images, output_names
from lcam.inference.local import run_inference
from lcam.inference.step import InferenceOptions, Precision, autocast, prepare_model
from lcam.inference.writer import ERRORS, PREDICTIONS, OutputWriter

__all__ = [
    "ERRORS",
    "IMAGE_SUFFIXES",
    "PREDICTIONS",
    "DistributedWriter",
    "ExplainModule",
    "ImageFile",
    "ImageFiles",
    "InferenceOptions",
    "LaunchError",
    "OutputWriter",
    "Precision",
    "autocast",
    "build_explainer_from_args",
    "build_parser",
    "collate_images",
    "collect_images",
    "main",
    "output_names",
    "parse_target",
    "prepare_model",
    "read_rgb",
    "run_distributed_inference",
    "run_inference",
]
