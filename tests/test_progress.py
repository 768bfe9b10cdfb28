"""Progress of long steps: a tqdm bar with the time left on a terminal, one line per N % in logs
(:func:`lcam._io.progress`), the same lines for Lightning stages (``train.py fit`` / ``test``,
:class:`lcam.training.progress.LogProgressBar`) and for ``infer.py``; quiet when disabled."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from lcam._io import progress
from lcam.training.progress import LogProgressBar

# tqdm writes the time left as "?" while it has no rate yet (a first update at once).
LINE = r"{}: +{}% \({}/{} {}\) in \d\d:\d\d, ETA (\d\d:\d\d|\?)"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_one_line_per_step_of_the_total_and_a_terminal_a_bar() -> None:
    log = io.StringIO()
    with progress(20, "explaining", "img", every=0.25, stream=log) as bar:
        for _ in range(20):
            bar.update(1)
    lines = log.getvalue().splitlines()
    expected = [LINE.format("explaining", 25 * k, 5 * k, 20, "img") for k in (1, 2, 3, 4)]
    assert len(lines) == 4 and all(map(re.fullmatch, expected, lines)), lines

    log = io.StringIO()  # a jump over several steps gives one line, where it landed
    with progress(10, "x", stream=log) as bar:
        bar.update(3)
        bar.update(7)
    assert [line.split(" in ")[0] for line in log.getvalue().splitlines()] == [
        "x: 30% (3/10 it)",
        "x: 100% (10/10 it)",
    ]

    terminal = _Terminal()
    with progress(10, "explaining", "img", stream=terminal) as bar:
        bar.update(4)
    drawn = terminal.getvalue()
    assert "\r" in drawn and "4/10" in drawn and "<" in drawn  # elapsed<left: the ETA

    for stream in (io.StringIO(), _Terminal()):
        with progress(10, "quiet", enabled=False, stream=stream) as bar:
            bar.update(10)
        assert stream.getvalue() == ""


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.layer(batch)


def test_lightning_stages_log_one_line_per_ten_percent(tmp_path) -> None:
    log = io.StringIO()
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[LogProgressBar(stream=log)],
    )
    trainer.test(_Tiny(), DataLoader(torch.zeros(20, 2), batch_size=1), verbose=False)
    lines = log.getvalue().splitlines()
    expected = [LINE.format("test", 10 * k, 2 * k, 20, "batch") for k in range(1, 11)]
    assert len(lines) == 10 and all(map(re.fullmatch, expected, lines)), lines


def test_infer_logs_its_progress_unless_no_progress(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "inference"))
    from infer_runs import pictures, save_checkpoint

    from lcam.inference import main as infer_main

    pictures(tmp_path / "in", 10, 32)
    command = [
        *("--checkpoint", str(save_checkpoint(tmp_path)), "--input", str(tmp_path / "in")),
        *("--output", str(tmp_path / "out"), "--batch-size", "1", "--num-workers", "0"),
    ]
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal (a log)
    assert infer_main(command) == 0
    lines = sys.stderr.getvalue().splitlines()
    expected = [LINE.format("explaining", 10 * k, k, 10, "img") for k in range(1, 11)]
    assert len(lines) == 10 and all(map(re.fullmatch, expected, lines)), lines

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert infer_main([*command, "--overwrite", "--no-progress"]) == 0
    assert sys.stderr.getvalue() == ""
    assert "10 explained" in capsys.readouterr().out
