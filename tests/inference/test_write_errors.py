"""A full disk, a read-only folder or a refused permission stops a run with one clear line.

``infer.py``: the write error is injected in-process at the atomic-write helper
(:func:`lcam._io.atomic_write`, through which every output and journal rewrite goes) after a few
files, *after* the temporary file was filled, as a disk that fills up mid-file does. The run
must print one line naming the folder, the error and the images done, exit 3, leave no partial
file, and the same command must finish the job once the folder is writable again. A really
read-only folder is made with ``chattr +i`` (tests run as root, for whom ``chmod`` does not
stop writes; the immutable flag does).

``train.py``: a checkpoint that cannot be written (injected at Lightning's checkpoint writer)
stops training with one line naming the checkpoint folder, exit code 1, instead of a traceback.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from infer_runs import assert_whole_and_journaled, make_read_only, pictures, save_checkpoint

import lcam._io
from lcam.inference import main as infer_main

REAL_ATOMIC_WRITE = lcam._io.atomic_write
COUNT = 8


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt"))


def _failing_after(successes: int, code: int):
    """An ``atomic_write`` that works ``successes`` times, then fills the temporary file and
    fails with ``code`` (``OSError``) on every later call."""
    calls = {"n": 0}

    def atomic_write(path, write):
        calls["n"] += 1
        if calls["n"] <= successes:
            return REAL_ATOMIC_WRITE(path, write)

        def fill_then_fail(temporary: Path) -> None:
            write(temporary)
            raise OSError(code, os.strerror(code))

        return REAL_ATOMIC_WRITE(path, fill_then_fail)

    return atomic_write


def _args(checkpoint: Path, folder: Path, out: Path) -> list[str]:
    return [
        *("--checkpoint", str(checkpoint), "--input", str(folder), "--output", str(out)),
        *("--batch-size", "2", "--num-workers", "0", "--no-progress"),
    ]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_write_error_mid_run_gives_one_line_and_a_rerun_finishes(
    tmp_path, checkpoint, monkeypatch, capsys, code
) -> None:
    names = pictures(tmp_path / "in", COUNT, 64)
    out = tmp_path / "out"
    args = _args(checkpoint, tmp_path / "in", out)
    # Each image writes two files: 5 successes, then every write fails (in the 3rd image).
    monkeypatch.setattr(lcam._io, "atomic_write", _failing_after(6, code))
    assert infer_main(args) == 3
    err = capsys.readouterr().err.strip().splitlines()
    records = assert_whole_and_journaled(out, 64)
    assert len(err) == 1, err
    assert err[0].startswith(f"infer.py: error: cannot write in {out}: [Errno {code}]"), err
    assert os.strerror(code) in err[0]
    assert f"; {len(records)} of {COUNT} images done" in err[0], (err, len(records))
    assert 0 < len(records) < COUNT

    monkeypatch.setattr(lcam._io, "atomic_write", REAL_ATOMIC_WRITE)
    assert infer_main(args) == 0
    final = assert_whole_and_journaled(out, 64)
    assert sorted(record["name"] for record in final) == names


def test_a_read_only_output_folder_is_reported_and_a_rerun_after_the_fix_finishes(
    tmp_path, checkpoint, capsys
) -> None:
    names = pictures(tmp_path / "in", COUNT, 64)
    out = tmp_path / "out"
    out.mkdir()
    undo = make_read_only(out)
    try:
        code = infer_main(_args(checkpoint, tmp_path / "in", out))
    finally:
        subprocess.run(undo, check=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3
    assert len(err) == 1 and err[0].startswith(f"infer.py: error: cannot write in {out}"), err
    assert f"0 of {COUNT} images done" in err[0], err
    assert list(out.iterdir()) == []

    assert infer_main(_args(checkpoint, tmp_path / "in", out)) == 0
    final = assert_whole_and_journaled(out, 64)
    assert sorted(record["name"] for record in final) == names


def test_training_that_cannot_write_its_checkpoint_stops_with_one_line(
    tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "training"))
    from test_resume import _config

    from lcam.cli import main as train_main

    monkeypatch.setattr(sys, "argv", ["train.py"])
    config = _config(tmp_path / "run", data={"train_size": 64}, trainer={"max_steps": 4})

    def full_disk(state, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("lightning_fabric.plugins.io.torch_io._atomic_save", full_disk)
    with pytest.raises(SystemExit) as stopped:
        train_main(["fit", "--config", str(config)])
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    line = f"train.py: error: cannot write in {tmp_path / 'run' / 'checkpoints'}: No space left"
    assert line in err, err[-2000:]
    assert "Traceback" not in err
