"""One measurement in this process (what each subprocess of the suite runs): a timed,
counted ``Row`` of one (model, method) pair."""

from __future__ import annotations

import math
import os
import time

from benchmarks.cases import Context, NotApplicableError, build_case, setup
from benchmarks.cases.base import Case, no_grad
from benchmarks.machine import current_rss_mb, peak_rss_mb
from benchmarks.memory import peak_tensor_mb
from benchmarks.models import MODELS, make_images
from benchmarks.passes import PassCounter
from benchmarks.rows import Row, number
from benchmarks.timing import time_call


def measure(
    model: str,
    method: str,
    *,
    batch_size: int,
    repeats: int,
    threads: int,
    quick: bool,
    max_seconds: float | None,
) -> Row:
    """Build the model and the case, time it and return its row (in this process)."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported (it reads it once)
    import torch

    started = time.perf_counter()
    torch.set_num_threads(threads)
    spec = MODELS[model]
    row = Row(model, method)
    images, labels = make_images(spec, batch_size)
    backbone, owner = setup(spec, method)
    ctx = Context(model, spec, backbone, images, labels, quick, owner)
    try:
        case = build_case(ctx, method)
    except NotApplicableError as reason:
        row.status, row.note = "n/a", str(reason)
        row.seconds = time.perf_counter() - started
        return row

    count = len(case.images)
    row.settings, row.options, row.images_per_call = case.settings, case.options, count
    row.baseline_rss_mb = current_rss_mb()

    reference_call = case.reference or no_grad(lambda: backbone(case.images))
    if method == "forward":
        reference = None
    else:
        # Cheap, so always at least 5 runs: a stall in the reference skews the whole row's ratio.
        reference = time_call(reference_call, count, repeats=max(5, repeats)).median
        row.reference_forward_ms_per_image = reference

    counter = PassCounter(case.network, backbone.normalise(case.images[:1]))
    warmup = None
    if case.slow:
        # A full warm-up would double the cost; a forward of the same shape warms the kernels,
        # and each run is hundreds of batched passes, which amortise first-call effects.
        warmup = no_grad(lambda: [backbone(case.images) for _ in range(2)])
    timing = time_call(
        case.call,
        count,
        repeats=repeats,
        max_seconds=max_seconds,
        warmup=warmup,
        first=counter.counting,
    )
    counter.remove()

    row.ms_per_image = timing.median
    row.run_ms_per_image = timing.ms_per_image
    row.runs, row.calls_per_run = len(timing.ms_per_image), timing.calls_per_run
    row.ratio = 1.0 if reference is None else timing.median / reference
    for key, value in counter.per_image(count).items():
        setattr(row, key, value)
    notes = list(case.notes)
    _compare_reported(row, case, notes)
    _scale(row, case, repeats, notes)
    if len(timing.ms_per_image) < repeats:
        notes.append(f"{len(timing.ms_per_image)} of {repeats} runs (--max-seconds)")
    if case.memory and not case.slow:
        row.peak_tensor_mb = peak_tensor_mb(case.call)
        row.reference_peak_tensor_mb = (
            row.peak_tensor_mb if method == "forward" else peak_tensor_mb(reference_call)
        )
        row.memory_ratio = row.peak_tensor_mb / row.reference_peak_tensor_mb
    row.note = "; ".join(notes)
    row.peak_rss_mb = peak_rss_mb()
    row.seconds = time.perf_counter() - started
    return row


def _compare_reported(row: Row, case: Case, notes: list[str]) -> None:
    """Record the passes the last ``Explanation`` reports; a note if they differ from the
    counted ones."""
    explanation = case.result() if case.result is not None else None
    if explanation is None:
        return
    row.reported_forward_passes = float(explanation.forward_passes)
    row.reported_backward_passes = float(explanation.backward_passes)
    counted = (
        row.forward_passes + row.forward_tail_passes,
        row.backward_passes + row.backward_tail_passes,
    )
    reported = (row.reported_forward_passes, row.reported_backward_passes)
    if not all(math.isclose(a, b) for a, b in zip(counted, reported, strict=True)):
        notes.append(
            f"Explanation reports {row.reported_forward_passes:g} fwd / "
            f"{row.reported_backward_passes:g} bwd per image"
        )


def _scale(row: Row, case: Case, repeats: int, notes: list[str]) -> None:
    """For a reduced setting: the time per image scaled to the default (the fixed part, e.g.
    segmentation, measured separately and not scaled)."""
    if case.scale is None:
        return
    what, factor, fixed_call = case.scale
    fixed = 0.0
    if fixed_call is not None:
        count = len(case.images)
        fixed = time_call(fixed_call, count, repeats=min(3, repeats), warmup=lambda: None).median
    row.scaled_ms_per_image = fixed + (row.ms_per_image - fixed) * factor
    kept = f"; {number(fixed)} ms of segmentation kept fixed" if fixed_call else ""
    notes.append(
        f"scaled to {what}: {number(row.scaled_ms_per_image)} ms/image (cost linear in the "
        f"passes, x{factor:.3g}{kept})"
    )
