"""Test-wide guards: no network (here and in every subprocess), offline W&B, small thread
count, deterministic seeds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from _guard import no_network as guard

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Tiny test models gain nothing from threads, and oversubscribed OpenMP threads stall badly.
torch.set_num_threads(1)

# Outbound network is refused from here on in this process (fixtures included), and in every
# Python subprocess the tests start with this environment (train.py, infer.py, DDP ranks):
# tests/_guard/sitecustomize.py installs the same guard at their start-up.
GUARD_DIR = str(Path(__file__).resolve().parent / "_guard")
_paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != GUARD_DIR]
os.environ["PYTHONPATH"] = os.pathsep.join([GUARD_DIR, *_paths])
guard.install()


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs with outbound network refused, as on a machine with no internet (and the
    guard comes back after a test that replaced it)."""
    for (owner, name), guarded in guard.GUARDS.items():
        monkeypatch.setattr(owner, name, guarded)


@pytest.fixture(autouse=True)
def seeded() -> None:
    torch.manual_seed(0)
