"""A progress line with steps/s and ETA, logged at the loop's logging period."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping


def format_duration(seconds: float) -> str:
    """`3725` -> `'1h02m05s'`."""
    seconds = max(round(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Progress:
    """Tracks throughput since the last report and formats `step 120/1000 ... ETA 2m45s`."""

    def __init__(
        self, start_step: int, total_steps: int, clock: Callable[[], float] = time.monotonic
    ):
        self._total = total_steps
        self._clock = clock
        self._last_step = start_step
        self._last_time = clock()
        self._excluded = 0.0

    def exclude(self, seconds: float) -> None:
        """Leaves `seconds` (evaluation, checkpointing) out of the training throughput."""
        self._excluded += seconds

    def report(self, step: int, metrics: Mapping[str, float] | None = None) -> tuple[str, float]:
        """Returns (the progress line, training steps per second since the last report).

        The ETA uses the training rate only, so it leaves out future evaluations.
        """
        now = self._clock()
        elapsed = max(now - self._last_time - self._excluded, 1e-9)
        rate = (step - self._last_step) / elapsed
        self._last_step, self._last_time, self._excluded = step, now, 0.0
        remaining = self._total - step
        eta = format_duration(remaining / rate) if rate > 0 else "?"
        percent = 100.0 * step / max(self._total, 1)
        line = f"step {step}/{self._total} ({percent:.0f}%) {rate:.2f} steps/s ETA {eta}"
        if metrics:
            line += " | " + " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
        return line, rate
