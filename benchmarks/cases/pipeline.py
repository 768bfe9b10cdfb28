"""``infer.py`` end to end: ``run_inference`` on a folder of JPEG files, with its defaults."""

from __future__ import annotations

import atexit
import inspect
import shutil
import tempfile
from pathlib import Path

from benchmarks.cases.base import Case, Context

METHODS = ["infer.lcam_fm"]
# JPEG files of this side (larger than the model's input, as photos are), this many per model
# (enough batches of infer.py's default 16 for the loader to run ahead).
PIPELINE_SIDE = 320
PIPELINE_IMAGES = {"quickstart": 256, "resnet50": 64, "vgg16": 64}


def build(ctx: Context, method: str) -> Case:
    """``infer.py``'s :func:`~lcam.inference.run_inference` on a folder of JPEG files, end to
    end (decoding in loader workers, model, maps and overlays written), with its defaults;
    the reference is the model alone on the same decoded images in batches of the same size."""
    import torch
    from PIL import Image

    import lcam
    from lcam.data import SyntheticShapes
    from lcam.inference import ImageFiles, collect_images, run_inference

    defaults = inspect.signature(run_inference).parameters
    batch_size = defaults["batch_size"].default
    workers = defaults["num_workers"].default
    explainer = lcam.build_explainer(ctx.backbone, head=method.partition(".")[2]).eval()
    folder = Path(tempfile.mkdtemp(prefix="lcam-benchmark-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    count = PIPELINE_IMAGES[ctx.name]
    shapes = SyntheticShapes(count, image_size=PIPELINE_SIDE, seed=0)
    (folder / "images").mkdir()
    for index in range(count):
        pixels = (shapes[index]["image"] * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(folder / "images" / f"{index:05d}.jpg", quality=90)
    files = collect_images([folder / "images"])
    decoded = ImageFiles(files, ctx.spec.input_size)
    images = torch.stack([decoded[i]["image"] for i in range(count)])

    def end_to_end() -> None:
        run_inference(explainer, files, folder / "maps", overwrite=True, progress=False)

    def model_only() -> None:
        with torch.no_grad():
            for batch in images.split(batch_size):
                explainer.explain(batch)

    return Case(
        end_to_end,
        images,
        ctx.backbone.model,
        options={
            "images": count,
            "side": PIPELINE_SIDE,
            "batch_size": batch_size,
            "num_workers": workers,
        },
        settings=(
            f"{count} JPEG files {PIPELINE_SIDE}x{PIPELINE_SIDE}, infer.py defaults "
            f"(batch {batch_size}, {workers} workers)"
        ),
        notes=[
            "ratio = end to end / the model alone (explain() on the decoded images, same "
            "batches); images/s end to end = 1 / ratio of the model's"
        ],
        reference=model_only,
        memory=False,
    )
