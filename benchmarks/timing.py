"""Warm-up and timed runs of one call (``time_call``), in milliseconds per image."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any


@dataclass
class Timing:
    """Per-image times of the timed runs and how they were taken."""

    ms_per_image: list[float]
    calls_per_run: int

    @property
    def median(self) -> float:
        return statistics.median(self.ms_per_image)


def time_call(
    call: Callable[[], Any],
    images: int,
    *,
    repeats: int,
    warmup: Callable[[], Any] | None = None,
    first: Callable[[], AbstractContextManager[Any]] | None = None,
    min_run_seconds: float = 0.2,
    max_seconds: float | None = None,
) -> Timing:
    """Warm up, then time ``repeats`` runs of ``call`` and return per-image milliseconds.

    Args:
        call: one call that explains ``images`` images.
        images: images per call.
        repeats: timed runs (at least one is always made).
        warmup: a cheap stand-in for the warm-up; ``None`` warms up with ``call`` itself (twice,
            the second call sets how many calls one run makes so that a run lasts at least
            ``min_run_seconds``).
        first: wrapper context for the first call (pass counting); ``None`` for none.
        max_seconds: stop repeating once the timed runs have taken this long (``None``: never).
    """
    number = 1
    counted = False

    def counted_call() -> None:
        nonlocal counted
        if first is not None and not counted:
            with first():
                call()
            counted = True
        else:
            call()

    if warmup is None:
        counted_call()
        start = time.perf_counter()
        call()
        elapsed = time.perf_counter() - start
        number = max(1, min(1000, math.ceil(min_run_seconds / max(elapsed, 1e-9))))
    else:
        warmup()
    runs: list[float] = []
    spent = 0.0
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        for _ in range(number):
            counted_call()
        elapsed = time.perf_counter() - start
        spent += elapsed
        runs.append(elapsed / number / images * 1000)
        if max_seconds is not None and max_seconds > 0 and spent > max_seconds:
            break
    return Timing(runs, number)
