"""Every code block of the README and of the docs' getting-started page and tutorials runs.

Blocks fenced as ``python`` or ``bash`` run in order, one temporary working folder per page
(``train.py``, ``infer.py``, ``configs/``, ``lcam/`` and ``scripts/`` linked in, the venv's
``python`` first on ``PATH``), so a later block can use what an earlier one wrote. That ``python``
is ``shim.py``: every ``python ...`` command (and every Python block, run as ``python block.py``)
runs in a fork of one ``forkserver.py`` process that imported torch, Lightning and lcam once per
session, so a command costs its own work and not 4 s of imports; it is otherwise the command
shown, in its own process. Other fences
(``text``, ``yaml``, ...) are not run. An HTML comment on the line before a fence changes that:

- ``<!-- docs-test: skip REASON -->``: the block is not run (a reason is required), e.g. a
  command that trains for minutes or needs ImageNet;
- ``<!-- docs-test: append SCRIPT ARGS -->``: ``ARGS`` are inserted into every command of the
  block that runs ``SCRIPT`` (after its ``--config FILE`` when it has one, so the block's own
  later options still win), e.g. ``--trainer.limit_train_batches 1`` to make a training run
  take seconds. The command shown is otherwise the one run.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [
    ROOT / "README.md",
    ROOT / "docs" / "getting-started.md",
    *sorted((ROOT / "docs" / "tutorials").glob("*.md")),
]
LINKED = ("train.py", "infer.py", "configs", "lcam", "scripts")
MARKER = re.compile(r"<!-- docs-test: (skip|append) (.*?) -->")
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass
class Block:
    language: str
    code: str
    line: int
    skip: str | None = None
    append: tuple[str, str] | None = None


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page`` with the marker of the line before each."""
    lines = page.read_text(encoding="utf-8").split("\n")
    found, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        block = Block(opening.group(1), "\n".join(lines[index + 1 : end]) + "\n", index + 1)
        marker = MARKER.fullmatch(lines[index - 1].strip()) if index else None
        if marker and marker.group(1) == "skip":
            block.skip = marker.group(2).strip()
        elif marker:
            script, _, args = marker.group(2).partition(" ")
            block.append = (script, args.strip())
        found.append(block)
        index = end + 1
    return found


def with_appended(code: str, script: str, args: str) -> str:
    """``code`` with ``args`` inserted into every command running ``script``."""
    joined = code.replace("\\\n", " ")
    out = []
    for line in joined.split("\n"):
        words = shlex.split(line, comments=True) if script in line else []
        if script in words:
            at = words.index("--config") + 2 if "--config" in words else len(words)
            words[at:at] = shlex.split(args)
            line = shlex.join(words)
        out.append(line)
    return "\n".join(out)


def workdir(tmp_path: Path) -> Path:
    for name in LINKED:
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


@pytest.fixture(scope="session")
def python_bin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of the blocks: ``python`` on ``PATH`` runs in a fork of the fork server."""
    folder = tmp_path_factory.mktemp("docs-python")
    address = folder / "forkserver.sock"
    shim = Path(__file__).with_name("shim.py")
    for name in ("python", "python3"):
        (folder / name).write_text(f'#!/bin/sh\nexec "$LCAM_DOCS_PYTHON" "{shim}" "$@"\n')
        (folder / name).chmod(0o755)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    server = subprocess.Popen(
        [sys.executable, str(shim.with_name("forkserver.py")), str(address)],
        env=env,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert server.stdout is not None and server.stdout.readline() == b"ready\n"
    venv = Path(sys.executable).parent
    env.update(
        PATH=f"{folder}{os.pathsep}{venv}{os.pathsep}{os.environ['PATH']}",
        NO_MKDOCS_2_WARNING="1",
        LCAM_DOCS_FORKSERVER=str(address),
        LCAM_DOCS_PYTHON=sys.executable,
    )
    yield env
    os.killpg(server.pid, signal.SIGKILL)  # the server and any child a timed-out block left
    server.wait()


def run(block: Block, cwd: Path, page: Path, env: dict[str, str]) -> None:
    if block.language == "python":
        (cwd / "block.py").write_text(block.code)
        command = ["python", "block.py"]
    else:
        code = with_appended(block.code, *block.append) if block.append else block.code
        command = ["bash", "-euo", "pipefail", "-c", code]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    where = f"{page.relative_to(ROOT)}:{block.line}"
    print(f"{where}: {time.perf_counter() - start:.1f} s")
    assert result.returncode == 0, f"{where} failed:\n{block.code}\n{result.stderr[-4000:]}"


def test_markers_are_well_formed() -> None:
    for page in PAGES:
        for block in blocks(page):
            if block.skip is not None:
                assert len(block.skip) > 10, f"{page.name}:{block.line}: skip needs a reason"
            if block.append:
                assert block.append[0].endswith(".py") and block.append[1], block
    assert [b for b in blocks(ROOT / "README.md") if b.language == "python" and not b.skip]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_code_block_runs(page: Path, tmp_path: Path, python_bin: dict[str, str]) -> None:
    cwd = workdir(tmp_path)
    runnable = [b for b in blocks(page) if b.language in ("python", "bash") and b.skip is None]
    for block in runnable:
        run(block, cwd, page, python_bin)
