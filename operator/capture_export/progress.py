"""A progress line for commands whose work may take a while (``restore``, ``verify``).

Silent for the first second (a quick command prints nothing extra), then updated at most once a second on
standard error: rewritten in place on a terminal, one line per update otherwise (a log stays readable).
The rate is of ``unit``, or of ``rate_unit`` when the work is counted in one thing and its speed in another
(``verify``: objects, and records per second).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressLine"]


class ProgressLine:
    def __init__(self, what: str, total: int | None = None, *, unit: str = "records", rate_unit: str | None = None,
                 out: TextIO | None = None, delay: float = 1.0, interval: float = 1.0) -> None:
        self.what = what
        self.total = total
        self.unit = unit
        self.rate_unit = rate_unit
        self.out = out or sys.stderr
        self.delay = delay
        self.interval = interval
        self.started = time.monotonic()
        self._last = 0.0
        self._shown = False
        self._done = 0
        self._rated = 0
        self._tty = bool(getattr(self.out, "isatty", lambda: False)())

    def update(self, done: int, *, rated: int | None = None, force: bool = False) -> None:
        """``done`` of ``total`` ``unit``; ``rated``: how many ``rate_unit`` so far (with a ``rate_unit``)."""
        self._done = done
        if rated is not None:
            self._rated = rated
        now = time.monotonic()
        if not force and (now - self.started < self.delay or now - self._last < self.interval):
            return
        self._last = now
        self._shown = True
        elapsed = max(now - self.started, 1e-6)
        text = f"{self.what}: {done:,}"
        if self.total:
            text += f"/{self.total:,} {self.unit} ({min(done / self.total, 1.0):.0%})"
        else:
            text += f" {self.unit}"
        if self.rate_unit is None:
            text += f", {_rate(done / elapsed)}/s, {elapsed:.0f}s"
        else:
            text += f", {self._rated:,} {self.rate_unit}, {_rate(self._rated / elapsed)} {self.rate_unit}/s, " \
                    f"{elapsed:.0f}s"
        if self._tty:
            self.out.write(f"\r{text}\x1b[K")
        else:
            self.out.write(f"{text}\n")
        self.out.flush()

    def finish(self) -> None:
        """End the line (once it was shown): the final count, and a newline on a terminal."""
        if not self._shown:
            return
        self.update(self._done, force=True)
        if self._tty:
            self.out.write("\n")
            self.out.flush()


def _rate(per_second: float) -> str:
    """A rate with the digits that say something: a slow one is not rounded down to 0."""
    return f"{per_second:,.0f}" if per_second >= 10 else f"{per_second:.2g}"
