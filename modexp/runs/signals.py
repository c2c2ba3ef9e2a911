"""Stop signals: SIGTERM (a scheduler's preemption, `kill`) and SIGUSR1 (Slurm's
`--signal=USR1@<seconds>` before the time limit) ask a sweep to checkpoint and exit, so the
same command resumes it; without this a preempted run lost everything since its last
checkpoint.

The handler only records the signal's name; the Trainer checks it after each step
(training/train.py, Preempted), where a checkpoint is consistent.
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopSignals:
    """While entered, SIGTERM and SIGUSR1 set `received` (the signal's name) instead of
    ending the process; calling the object returns it (None until one arrives). Outside the
    main thread (where Python cannot install handlers) it records nothing."""

    def __init__(self):
        self.received: str | None = None
        self._old: dict = {}

    def __call__(self) -> str | None:
        return self.received

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}
