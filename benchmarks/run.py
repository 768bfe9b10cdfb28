"""Speed and memory of lcam's one-pass explainer against classic explainers and peer libraries.

Usage::

    python benchmarks/run.py [--models quickstart resnet50 vgg16] [--methods ...]
        [--batch-size 8] [--repeats 5] [--threads 2] [--quick] [--json out.json]
    python benchmarks/run.py --single MODEL METHOD [same options]   # one measurement, in-process

Every (model, method) pair runs in its own subprocess (``--single``), so the peak resident memory
reported for a row belongs to that measurement alone. Each measurement is warmed up, then timed
``--repeats`` times with ``time.perf_counter``; the row gives the median time per image, its ratio
to a plain forward of the same batch measured in the same process, the forward and backward passes
per image *counted* with hooks on the network's first and last layers, and the peak RSS.
``benchmarks/README.md`` explains every column and the caveats; ``benchmarks/__init__.py`` the
layout (one module per measurement group under ``benchmarks/cases/``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, Python puts benchmarks/ first on the path, where its modules would shadow
# top-level names (``models``, ``memory``, ...); import them as the ``benchmarks`` package instead.
# Loaded from a file by another program (the smoke test), add the root last: it shadows nothing.
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "benchmarks":
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from benchmarks.cases import GROUPS, METHODS, expand_methods, skip_reason  # noqa: E402
from benchmarks.machine import load_average, machine_info  # noqa: E402
from benchmarks.measure import measure  # noqa: E402
from benchmarks.memory import peak_tensor_mb  # noqa: E402
from benchmarks.models import MODELS  # noqa: E402
from benchmarks.rows import Row, markdown_table, number, write_json  # noqa: E402
from lcam._io import progress  # noqa: E402

# What tests and notebooks use from this script.
__all__ = [
    "Row",
    "expand_methods",
    "main",
    "markdown_table",
    "measure",
    "parse_args",
    "peak_tensor_mb",
    "run_child",
    "skip_reason",
]


def _child_command(model: str, method: str, args: argparse.Namespace, out: Path) -> list[str]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--single",
        model,
        method,
        "--batch-size",
        str(args.batch_size),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
        "--json",
        str(out),
    ]
    if args.max_seconds is not None:
        command += ["--max-seconds", str(args.max_seconds)]
    if args.quick:
        command.append("--quick")
    return command


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[variable] = str(threads)
    env["TQDM_DISABLE"] = "1"
    env.setdefault("WANDB_MODE", "offline")
    return env


def run_child(model: str, method: str, args: argparse.Namespace) -> Row:
    """Measure one pair in a fresh subprocess and return its row (an error row on failure)."""
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "row.json"
        command = _child_command(model, method, args, out)
        try:
            process = subprocess.run(
                command,
                env=_child_env(args.threads),
                capture_output=True,
                text=True,
                timeout=args.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Row(model, method, status="error", note=f"timed out after {args.timeout} s")
        if process.returncode == 0 and out.exists():
            return Row(**json.loads(out.read_text())["rows"][0])
    if process.returncode < 0:
        reason = f"killed by signal {-process.returncode}"
        if -process.returncode == 9:
            reason += " (out of memory?)"
    else:
        lines = [line for line in process.stderr.strip().splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit code {process.returncode}"
    return Row(model, method, status="error", note=reason)


def _progress(index: int, total: int, row: Row, seconds: float) -> None:
    if row.status == "ok":
        result = f"{number(row.ms_per_image)} ms/image, x{number(row.ratio)}"
    else:
        result = f"{row.status}: {row.note}"
    # Above the bar on a terminal (tqdm.write), a plain line in a log.
    line = f"[{index}/{total}] {row.model} {row.method}: {result} ({seconds:.0f} s)"
    tqdm.write(line, sys.stderr)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["all"],
        help=f"methods or groups ({', '.join(GROUPS)}); methods: {', '.join(METHODS)}",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per call (default 8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="on the 224 px models: fewer masks/samples/patches for the slow methods; skip "
        "Score-CAM",
    )
    parser.add_argument("--json", type=Path, help="write the rows and machine info here")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=120.0,
        help="stop repeating a measurement once its timed runs took this long (0: never; "
        "default 120)",
    )
    parser.add_argument(
        "--timeout", type=float, help="kill a measurement's subprocess after this many seconds"
    )
    parser.add_argument(
        "--single",
        nargs=2,
        metavar=("MODEL", "METHOD"),
        help="measure one pair in this process (what the suite runs in each subprocess)",
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("--batch-size, --repeats and --threads must be >= 1")
    try:
        args.methods = expand_methods(args.methods)
        if args.single:
            expand_methods([args.single[1]])
    except ValueError as error:
        parser.error(str(error))
    if args.single and args.single[0] not in MODELS:
        parser.error(f"unknown model {args.single[0]!r}; choose from {', '.join(MODELS)}")
    return args


def _single(args: argparse.Namespace, settings: dict) -> int:
    """``--single``: measure one pair in this process; its row as JSON or a table."""
    model, method = args.single
    reason = skip_reason(model, method, args.quick)
    if reason is not None:
        row = Row(model, method, status="skipped", note=reason)
    else:
        row = measure(
            model,
            method,
            batch_size=args.batch_size,
            repeats=args.repeats,
            threads=args.threads,
            quick=args.quick,
            max_seconds=args.max_seconds or None,
        )
    if args.json:
        write_json(args.json, machine_info(args.threads), [row], settings)
    else:
        print(markdown_table([row]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = {
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "threads": args.threads,
        "quick": args.quick,
        "max_seconds": args.max_seconds,
    }
    if args.single:
        return _single(args, settings)

    machine = machine_info(args.threads)
    pairs = [(model, method) for model in args.models for method in args.methods]
    rows: list[Row] = []
    with progress(len(pairs), "benchmarks", "run", enabled=not args.no_progress) as bar:
        for index, (model, method) in enumerate(pairs, 1):
            start = time.perf_counter()
            reason = skip_reason(model, method, args.quick)
            if reason is not None:
                row = Row(model, method, status="skipped", note=reason)
            else:
                row = run_child(model, method, args)
            rows.append(row)
            _progress(index, len(pairs), row, time.perf_counter() - start)
            bar.update(1)
            if args.json:  # keep what is done if a long suite is interrupted
                write_json(args.json, machine, rows, settings)
    machine["load_average_end"] = load_average()
    load = ", ".join(f"{value:.2f}" for value in machine["load_average"] or [])
    print(
        f"CPU: {machine['cpu_model']} ({machine['usable_cpus']} usable); {args.threads} threads; "
        f"torch {machine['torch']}; batch {args.batch_size}; median of {args.repeats} runs"
        + ("; --quick" if args.quick else "")
        + (f"; load average at start {load}" if load else "")
    )
    print()
    print(markdown_table(rows))
    if args.json:
        write_json(args.json, machine, rows, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
