"""Resuming training, and what a checkpoint may and may not do to whoever loads it.

- A ``train.py fit`` killed with SIGKILL mid-epoch and resumed from its last checkpoint ends with
  the same head as the same run left alone (same seed, deterministic CPU run), and the resumed
  process ran only the remaining optimizer steps (counted from its logged steps): a run that
  ignored the checkpoint and retrained from step 0 with the same seed would also end with the
  same head, but not with that count.
- A checkpoint whose unpickling would run code is refused everywhere (nothing runs), a text file
  is reported as not being a checkpoint, and resuming with a checkpoint made for another model
  configuration fails before training, naming what differs.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from pytorch_lightning import LightningDataModule

import lcam
from lcam.cli import LCAMCLI
from lcam.cli import main as cli_main
from lcam.inference import main as infer_main
from lcam.models.tiny import SHAPES_WEIGHTS
from lcam.training import LCAMModule

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = yaml.safe_load((ROOT / "configs" / "quickstart_lcam_fm.yaml").read_text())
STEPS_PER_EPOCH = 16  # train_size 256 / batch 16


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    """In-process ``train.py`` runs get their arguments only from ``args``, not pytest's argv."""
    monkeypatch.setattr(sys, "argv", ["train.py"])


def _config(
    directory: Path,
    *,
    model: dict | None = None,
    data: dict | None = None,
    trainer: dict | None = None,
) -> Path:
    """A tiny CPU run derived from configs/quickstart_lcam_fm.yaml (the papers' L-CAM-Fm
    recipe: no BatchNorm in the head), writing only under ``directory``.

    A ModelCheckpoint saves after every optimizer step (keeping the newest as
    ``epoch=E-step=S.ckpt``) and as ``last.ckpt``; no logger, no validation.
    """
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 2,
            "default_root_dir": str(directory),
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "deterministic": True,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "callbacks": [
                {
                    "class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                    "init_args": {
                        "dirpath": str(directory / "checkpoints"),
                        "filename": "{epoch}-{step}",
                        "every_n_train_steps": 1,
                        "save_top_k": 1,
                        "save_last": True,
                    },
                }
            ],
            **(trainer or {}),
        },
        "model": {**QUICKSTART["model"], "weights": str(SHAPES_WEIGHTS), **(model or {})},
        "data": {
            "class_path": QUICKSTART["data"]["class_path"],
            "init_args": {
                **QUICKSTART["data"]["init_args"],
                "train_size": 256,
                "val_size": 16,
                "test_size": 16,
                "batch_size": 16,
                **(data or {}),
            },
        },
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}


def _train_command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(config), *extra]


def _head(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    head = {k: v for k, v in state.items() if k.startswith("explainer.head.")}
    assert head, f"no explainer.head.* entries in {checkpoint}"
    return head


def _step_checkpoints(folder: Path) -> dict[int, Path]:
    found = {}
    for path in folder.glob("epoch=*-step=*.ckpt"):
        match = re.fullmatch(r"epoch=(\d+)-step=(\d+)\.ckpt", path.name)
        if match:
            found[int(match.group(2))] = path
    return found


def _initial_head(config: Path) -> dict[str, torch.Tensor]:
    """The head as ``config``'s run starts (seeded, then built by the same CLI), untrained."""
    cli = LCAMCLI(
        LCAMModule, LightningDataModule, subclass_mode_data=True, args=["--config", str(config)],
        run=False,
    )  # fmt: skip
    return {f"explainer.head.{k}": v for k, v in cli.model.explainer.head.state_dict().items()}


def _logged_steps(folder: Path) -> list[int]:
    """The ``step`` of every row with a training loss in a CSVLogger's ``metrics.csv``."""
    (metrics,) = folder.glob("**/metrics.csv")
    with metrics.open(newline="") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle) if row.get("train/loss")]


def test_killed_mid_epoch_and_resumed_equals_uninterrupted(tmp_path) -> None:
    config_a = _config(tmp_path / "a")
    config_b = _config(tmp_path / "b")
    # The resumed run: B's config plus a CSV logger of every step (logging draws no random
    # numbers, so it cannot change the result).
    resumed_logs = tmp_path / "b" / "resumed_logs"
    logger = {"class_path": "pytorch_lightning.loggers.CSVLogger"}
    logger["init_args"] = {"save_dir": str(resumed_logs), "name": "", "version": ""}
    config_resumed = tmp_path / "b" / "resumed.yaml"
    resumed = yaml.safe_load(config_b.read_text())
    resumed["trainer"].update(logger=logger, log_every_n_steps=1)
    config_resumed.write_text(yaml.safe_dump(resumed))
    killed = tmp_path / "b" / "killed_last.ckpt"
    # Before the runs: a fit's SaveConfigCallback replaces config.yaml with its full config.
    initial = _initial_head(config_a)

    def start(command: list[str]) -> subprocess.Popen:
        return subprocess.Popen(
            command, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

    # Reference run A, run B (killed) and B's resumption share the two cores.
    processes = {"A": start(_train_command(config_a)), "B": start(_train_command(config_b))}
    try:
        run_b = processes["B"]
        deadline = time.monotonic() + 90
        while not any(step >= 5 for step in _step_checkpoints(tmp_path / "b" / "checkpoints")):
            assert run_b.poll() is None, run_b.communicate()[0].decode()[-3000:]
            assert time.monotonic() < deadline, "run B wrote no step-5 checkpoint within 90 s"
            time.sleep(0.01)
        run_b.send_signal(signal.SIGKILL)
        run_b.wait(timeout=30)
        assert run_b.returncode == -signal.SIGKILL
        (tmp_path / "b" / "checkpoints" / "last.ckpt").replace(killed)
        processes["resumed B"] = start(_train_command(config_resumed, "--ckpt_path", str(killed)))
        outputs = {
            name: processes[name].communicate(timeout=180)[0].decode()
            for name in ("A", "resumed B")
        }
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    for name, output in outputs.items():
        assert processes[name].returncode == 0, f"run {name} failed:\n{output[-3000:]}"

    state = torch.load(killed, map_location="cpu", weights_only=True)
    step = state["global_step"]
    assert 0 < step % STEPS_PER_EPOCH, f"the kill did not land mid-epoch (global step {step})"
    final_a = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    final_b = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert final_a["global_step"] == final_b["global_step"] == 2 * STEPS_PER_EPOCH
    head_a = _head(tmp_path / "a" / "checkpoints" / "last.ckpt")
    head_b = _head(tmp_path / "b" / "checkpoints" / "last.ckpt")
    assert head_a.keys() == head_b.keys()
    differences = {k: float((head_a[k] - head_b[k]).abs().max()) for k in head_a}
    assert max(differences.values()) <= 1e-6, (
        f"resumed at global step {step} (epoch {state['epoch']}); max |A - B| per tensor: "
        f"{differences}"
    )
    # The resumed process ran only the steps left after the kill, not all of them again ...
    steps = _logged_steps(resumed_logs)
    remaining = 2 * STEPS_PER_EPOCH - step
    assert len(steps) == remaining, (
        f"killed at step {step}, the resumed process ran {len(steps)} steps, not {remaining}"
    )
    assert sorted(steps) == list(range(step, 2 * STEPS_PER_EPOCH)), steps
    # ... from a checkpoint whose head had moved from the initial one, as did the final head.
    assert initial.keys() == head_a.keys()
    moved = {k: float((initial[k] - v).abs().max()) for k, v in _head(killed).items()}
    assert max(moved.values()) > 1e-3, moved
    assert max(float((initial[k] - head_b[k]).abs().max()) for k in initial) > 1e-2


class _RunsCode:
    """Unpickling this calls ``os.system("touch <marker>")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def hostile(tmp_path):
    """A checkpoint-shaped file that runs code when unpickled, a text file, and an image."""
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"lcam": _RunsCode(marker), "state_dict": {}, "pwned": _RunsCode(marker)}, evil)
    text = tmp_path / "notes.ckpt"
    text.write_text("this is a text file, not a checkpoint\n")
    image = tmp_path / "photo.png"
    Image.fromarray(np.full((16, 16, 3), 128, dtype=np.uint8)).save(image)
    return {"marker": marker, "evil": evil, "text": text, "image": image}


def test_code_in_a_checkpoint_never_runs(tmp_path, hostile, capsys) -> None:
    with pytest.raises(ValueError, match="not an lcam checkpoint") as error:
        lcam.load_explainer(hostile["evil"], device="cpu")
    assert str(hostile["evil"]) in str(error.value)
    assert not hostile["marker"].exists()

    code = infer_main(
        [
            "--checkpoint",
            str(hostile["evil"]),
            "--input",
            str(hostile["image"]),
            "--output",
            str(tmp_path / "out"),
            "--num-workers",
            "0",
            "--no-progress",
        ]
    )
    assert code == 2
    assert str(hostile["evil"]) in capsys.readouterr().err
    assert not hostile["marker"].exists()
    assert not (tmp_path / "out" / "predictions.jsonl").exists()

    config = _config(tmp_path / "run", data={"train_size": 32}, trainer={"max_epochs": 1})
    with pytest.raises((Exception, SystemExit)):
        cli_main(["fit", "--config", str(config), "--ckpt_path", str(hostile["evil"])])
    assert not hostile["marker"].exists()
    assert not _step_checkpoints(tmp_path / "run" / "checkpoints")


def test_a_text_file_is_reported_as_not_a_checkpoint(tmp_path, hostile, capsys) -> None:
    with pytest.raises(ValueError, match="not an lcam checkpoint") as error:
        lcam.load_explainer(hostile["text"], device="cpu")
    assert str(hostile["text"]) in str(error.value)

    code = infer_main(
        [
            "--checkpoint",
            str(hostile["text"]),
            "--input",
            str(hostile["image"]),
            "--output",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert str(hostile["text"]) in err and "not an lcam checkpoint" in err

    # train.py: a clear error naming the file, not a bare unpickling error.
    config = _config(tmp_path / "run", data={"train_size": 32}, trainer={"max_epochs": 1})
    with pytest.raises((Exception, SystemExit)) as raised:
        cli_main(["fit", "--config", str(config), "--ckpt_path", str(hostile["text"])])
    message = f"{raised.value}\n{capsys.readouterr().err}"
    assert str(hostile["text"]) in message and "checkpoint" in message.lower(), message
    assert not _step_checkpoints(tmp_path / "run" / "checkpoints")


# Trained once (2 steps) with a randomly initialised 6-class backbone, head at layer4, 64 px.
SAVED = {"weights": None, "num_classes": 6, "target_layer": "layer4", "input_size": 64}


@pytest.fixture(scope="module")
def six_class_checkpoint(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("six")
    config = _config(
        directory,
        model=SAVED,
        data={"num_classes": 6, "image_size": 64, "train_size": 64},
        trainer={"max_steps": 2},
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["train.py"])
        cli_main(["fit", "--config", str(config)])
    checkpoint = directory / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 2
    return checkpoint


@pytest.mark.parametrize(
    ("changes", "key", "saved", "now"),
    [
        ({"model": {"num_classes": 4}, "data": {"num_classes": 4}}, "num_classes", "6", "4"),
        ({"model": {"target_layer": "layer3"}}, "target_layer", "layer4", "layer3"),
        ({"model": {"input_size": 32}, "data": {"image_size": 32}}, "input_size", "64", "32"),
    ],
    ids=["num_classes", "target_layer", "input_size"],
)
def test_resuming_another_configuration_fails_before_training(
    tmp_path, capsys, six_class_checkpoint, changes, key, saved, now
) -> None:
    directory = tmp_path / "resume"
    config = _config(
        directory,
        model={**SAVED, **changes.get("model", {})},
        data={"num_classes": 6, "image_size": 64, "train_size": 64, **changes.get("data", {})},
        trainer={"max_steps": 4},
    )
    try:
        cli_main(["fit", "--config", str(config), "--ckpt_path", str(six_class_checkpoint)])
    except (Exception, SystemExit) as error:  # any failure; its message is checked
        message = f"{type(error).__name__}: {error}\n{capsys.readouterr().err}"
    else:
        trained = sorted(p.name for p in (directory / "checkpoints").glob("*.ckpt"))
        pytest.fail(
            f"resuming a checkpoint saved with {key}={saved} into a model configured with "
            f"{key}={now} did not fail; the run trained and wrote {trained}"
        )
    assert not list((directory / "checkpoints").glob("*.ckpt")), "training started"
    named = [line for line in message.splitlines() if key in line]
    assert any(saved in line and now in line for line in named), message
