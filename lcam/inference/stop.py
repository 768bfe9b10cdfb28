"""Stopping every process of a multi-process ``infer.py`` run after its batch in flight.

A signal may reach one rank only (``kill -TERM <launcher pid>``, a scheduler that signals the
first task) or all of them (Ctrl-C in a terminal). The rank that records it writes the flag file
``<output>/.infer.stop``; every rank, before it fetches its next batch, stops if it was signalled
itself or the flag exists (:class:`SharedStop`).

Why a flag file and not a vote between the ranks after each batch (as ``train.py fit`` does, see
:mod:`lcam.training.interruption`): Lightning's predict sampler does not repeat images, so the
ranks may get different numbers of batches (off by one), and a collective per batch would wait
forever on the rank that has one batch more. Checking the flag is a collective-free local test
(one ``stat`` per batch), so each rank ends its loop on its own, after its batch in flight; the
ranks then meet once, at the end, where they merge their journals anyway. The flag lives in the
output folder, which a multi-node run already needs on a shared file system.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from lcam.training.interruption import StopSignals

__all__ = ["STOP", "SharedStop"]

STOP = ".infer.stop"


class SharedStop:
    """The stop decision of one rank: its own signal, or the flag another rank wrote.

    Args:
        folder: the output folder (shared by all ranks).
        signals: this process's active :class:`~lcam.training.interruption.StopSignals`
            (``None``: only the flag can stop the rank). Every signal it records raises the flag.
    """

    def __init__(self, folder: str | Path, signals: StopSignals | None = None) -> None:
        self.path = Path(folder) / STOP
        self.signals = signals
        if signals is not None:
            signals.listen(lambda signum: self.announce())

    @property
    def signum(self) -> int:
        """The signal this rank received itself (0: none)."""
        return 0 if self.signals is None or self.signals.received is None else self.signals.received

    def announce(self) -> None:
        """Raise the flag if this rank was signalled (also called from the signal handler)."""
        if self.signum:
            # Not fatal: without the flag the other ranks finish their share, as before.
            with contextlib.suppress(OSError):
                self.path.touch()

    def requested(self) -> bool:
        """Whether this rank must stop: it was signalled, or the flag is up."""
        return bool(self.signum) or self.path.exists()

    def clear(self) -> None:
        """Lower the flag (rank 0: a flag left by a killed run at the start; at the end)."""
        self.path.unlink(missing_ok=True)

    def reinstall(self) -> None:
        """Put the signal handlers back over Lightning's, which it installs as a stage starts:
        its SIGTERM handler broadcasts between the ranks from inside the handler, which waits
        forever when the ranks are signalled different numbers of times."""
        if self.signals is not None:
            self.signals.reinstall()
