"""A progress line for long evaluation passes (Inception features of a whole split, 50k samples).

A FID reference over ImageNet's train split reads 1.28M images; without output it looks hung.
`Progress` logs `<what>: n/total images, r images/s, ETA ...` at most every `every_s` seconds
and a final line, on process 0 only.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
from absl import logging


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """Counts images through a pass and reports throughput and time left.

    Args:
      what: names the pass, e.g. "sampling FID reference ('train', whole split)".
      total: images the pass will read (None: unknown, no ETA).
      every_s: seconds between lines.
      log: where lines go (default: absl `logging.info` on process 0, nothing elsewhere).
      clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, what: str, total: int | None, *, every_s: float = 30.0,
                 log: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if log is None:
            log = (lambda line: logging.info("%s", line)) if jax.process_index() == 0 else (
                lambda line: None)
        self.what, self.total, self.every_s = what, total, every_s
        self.log, self.clock = log, clock
        self.count = 0
        self.start = self.last = clock()
        total_text = "" if total is None else f" ({total} images)"
        self.log(f"{what}: started{total_text}")

    def update(self, images: int) -> None:
        """`images` more are done; logs a line when `every_s` has passed since the last."""
        self.count += images
        now = self.clock()
        if now - self.last >= self.every_s:
            self.last = now
            self.log(self.line(now))

    def line(self, now: float | None = None) -> str:
        """`<what>: n/total images, r images/s, ETA t`."""
        now = self.clock() if now is None else now
        elapsed = max(now - self.start, 1e-9)
        rate = self.count / elapsed
        done = f"{self.count}" if self.total is None else f"{self.count}/{self.total}"
        text = f"{self.what}: {done} images, {rate:.1f} images/s"
        if self.total is not None and rate > 0:
            text += f", ETA {_duration(max(self.total - self.count, 0) / rate)}"
        return text

    def done(self) -> None:
        """Logs the final count, time and throughput."""
        elapsed = max(self.clock() - self.start, 1e-9)
        self.log(f"{self.what}: {self.count} images in {_duration(elapsed)} "
                 f"({self.count / elapsed:.1f} images/s)")
