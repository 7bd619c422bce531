"""Stopping on request in long work outside the training steps (a token-cache build, evaluation).

A scheduler preempts with SIGTERM and kills a few tens of seconds later, so work that can take
hours must notice the signal within seconds: it polls a `StopFlag` (or the loop's own signal
flag), keeps what it has done, and raises `StopRequestedError`; the loop then ends the run as
preempted (exit 0; running the same command again continues).
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class StopRequestedError(Exception):
    """Work stopped on SIGTERM / SIGINT; what it had done is kept (rerun to continue)."""


class StopFlag:
    """Set by SIGTERM or SIGINT while entered (handlers are installed on the main thread only).

    The handler that was installed before (e.g. the training loop's, which then checkpoints and
    stops) is still called, so the signal is not lost for the code around; a second Ctrl-C
    raises KeyboardInterrupt at once.
    """

    def __init__(self):
        self._event = threading.Event()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        again = self._event.is_set()
        self._event.set()
        previous = self._previous.get(signum)
        if previous is signal.default_int_handler:
            if again:
                raise KeyboardInterrupt
        elif callable(previous):
            previous(signum, frame)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def is_set(self) -> bool:
        return self._event.is_set()
