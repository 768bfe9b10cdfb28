"""SIGTERM (schedulers, ``timeout``) and SIGINT (Ctrl-C) stop ``train.py fit`` cleanly.

A tiny deterministic CPU run (8 steps of one epoch) is signalled mid-epoch: it must exit 143 /
130 (not 0, which a scheduler records as success), save ``interrupted.ckpt`` at the step it
reached, and print the command that resumes it. That printed command, run as printed, must end
with the same head as the same run left alone (to 1e-6), at the same step.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_resume import _config, _env, _head, _step_checkpoints, _train_command

from lcam.cli import resume_command

ROOT = Path(__file__).resolve().parents[2]
STEPS = 8  # train_size 128 / batch 16, one epoch
SMALL = {"data": {"train_size": 128}, "trainer": {"max_epochs": 1}}


def _start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        command, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def _signal_mid_epoch(process: subprocess.Popen, folder: Path, signum: int) -> None:
    """Send ``signum`` once the run saved its step-2 checkpoint."""
    deadline = time.monotonic() + 120
    while not any(step >= 2 for step in _step_checkpoints(folder)):
        if process.poll() is not None:
            pytest.fail(process.communicate()[0].decode()[-3000:])
        assert time.monotonic() < deadline, "no step-2 checkpoint within 120 s"
        time.sleep(0.01)
    process.send_signal(signum)


def _resumed(output: str) -> list[str]:
    """The resume command the run printed, made runnable here (this interpreter, full path)."""
    lines = output.splitlines()
    index = next((i for i, line in enumerate(lines) if "Resume with:" in line), None)
    assert index is not None, f"no resume command printed:\n{output[-3000:]}"
    words = shlex.split(lines[index + 1])
    assert words[:2] == ["python", "train.py"], words
    return [sys.executable, str(ROOT / "train.py"), *words[2:]]


def test_signals_save_a_checkpoint_exit_non_zero_and_the_printed_command_resumes(
    tmp_path,
) -> None:
    runs = {"reference": None, "SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}
    configs = {name: _config(tmp_path / name, **SMALL) for name in runs}
    processes = {name: _start(_train_command(configs[name])) for name in runs}
    try:
        for name, signum in runs.items():
            if signum is not None:
                _signal_mid_epoch(processes[name], tmp_path / name / "checkpoints", signum)
        outputs = {name: p.communicate(timeout=240)[0].decode() for name, p in processes.items()}
        codes = {name: process.returncode for name, process in processes.items()}
        tails = "\n".join(text[-1500:] for text in outputs.values())
        assert codes == {"reference": 0, "SIGTERM": 143, "SIGINT": 130}, f"{codes}\n{tails}"
        resumed = {name: _start(_resumed(outputs[name])) for name in ("SIGTERM", "SIGINT")}
        processes.update({f"resumed {name}": process for name, process in resumed.items()})
        for name, process in resumed.items():
            text = process.communicate(timeout=240)[0].decode()
            assert process.returncode == 0, f"resumed {name} failed:\n{text[-3000:]}"
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()

    reference = tmp_path / "reference" / "checkpoints" / "last.ckpt"
    head = _head(reference)
    for name in ("SIGTERM", "SIGINT"):
        interrupted = tmp_path / name / "checkpoints" / "interrupted.ckpt"
        assert str(interrupted) in outputs[name]
        step = torch.load(interrupted, map_location="cpu", weights_only=True)["global_step"]
        assert 0 < step < STEPS, f"{name} did not stop mid-epoch (global step {step})"
        final = tmp_path / name / "checkpoints" / "last.ckpt"
        assert torch.load(final, weights_only=True)["global_step"] == STEPS
        resumed_head = _head(final)
        differences = {k: float((head[k] - resumed_head[k]).abs().max()) for k in head}
        assert max(differences.values()) <= 1e-6, f"{name} at step {step}: {differences}"
    # The head moved during the run: equal heads are not two untouched initialisations.
    interrupted_head = _head(tmp_path / "SIGTERM" / "checkpoints" / "interrupted.ckpt")
    assert max(float((head[k] - interrupted_head[k]).abs().max()) for k in head) > 1e-4


def test_the_resume_command_keeps_the_arguments_and_replaces_an_old_checkpoint() -> None:
    command = resume_command(
        ["fit", "--config", "my run.yaml", "--ckpt_path", "old.ckpt", "--trainer.max_epochs=3"],
        Path("out/checkpoints/interrupted.ckpt"),
    )
    assert command == (
        "python train.py fit --config 'my run.yaml' --trainer.max_epochs=3 "
        "--ckpt_path out/checkpoints/interrupted.ckpt"
    )
