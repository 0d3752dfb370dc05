"""A progress line for commands whose work may take a while (``restore``, ``verify``).

Silent for the first second (a quick command prints nothing extra), then updated at most once a second on
standard error: rewritten in place on a terminal, one line per update otherwise (a log stays readable).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressLine"]


class ProgressLine:
    def __init__(self, what: str, total: int | None = None, *, unit: str = "records", out: TextIO | None = None,
                 delay: float = 1.0, interval: float = 1.0) -> None:
        self.what = what
        self.total = total
        self.unit = unit
        self.out = out or sys.stderr
        self.delay = delay
        self.interval = interval
        self.started = time.monotonic()
        self._last = 0.0
        self._shown = False
        self._done = 0
        self._tty = bool(getattr(self.out, "isatty", lambda: False)())

    def update(self, done: int, *, force: bool = False) -> None:
        self._done = done
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
        text += f", {done / elapsed:,.0f}/s, {elapsed:.0f}s"
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
