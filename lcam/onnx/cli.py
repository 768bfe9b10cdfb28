"""``python -m lcam.onnx``: export a trained head from a checkpoint."""

from __future__ import annotations

import argparse
import sys

from lcam.api import load_explainer
from lcam.onnx.export import export_onnx

__all__ = ["main"]


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
