"""Bearer tokens from a file (a mounted Kubernetes Secret), compared in constant time.

The file holds one token per line (several lines: rotation, the old and the new token both valid for a
while). It is re-read when it changes, at most once a second, so a rotated Secret takes effect without a
restart. Tokens are never logged, and a refusal never says how a given token was wrong.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from pathlib import Path

__all__ = ["TokenFile"]

log = logging.getLogger(__name__)


class TokenFile:
    def __init__(self, path: str | Path, *, recheck_seconds: float = 1.0) -> None:
        self.path = Path(path)
        self.recheck_seconds = recheck_seconds
        self._tokens: tuple[bytes, ...] = ()
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self._load(initial=True)

    def _load(self, *, initial: bool = False) -> None:
        try:
            stat = os.stat(self.path)
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._stamp:
                return
            text = self.path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            if initial:
                raise ValueError(f"{self.path}: not UTF-8 text, not a token file") from None
            log.warning("ingest: the token file %s is not UTF-8 text now; keeping the tokens read before", self.path)
            return
        except OSError as exc:
            if initial:  # the command names the file with its option (--token-file x: no such file)
                raise
            log.warning("ingest: cannot re-read the token file %s (%s); keeping the tokens read before",
                        self.path, exc.strerror)
            return
        tokens = tuple(line.strip().encode("utf-8") for line in text.splitlines() if line.strip())
        if not tokens:
            if initial:
                raise ValueError(f"{self.path}: holds no token")
            log.warning("ingest: the token file %s holds no token now; every request is refused", self.path)
        self._tokens, self._stamp = tokens, stamp

    def allows(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value carries a valid bearer token."""
        now = time.monotonic()
        if now - self._checked >= self.recheck_seconds:
            with self._lock:
                if now - self._checked >= self.recheck_seconds:
                    self._checked = now
                    self._load()
        if not authorization:
            return False
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return False
        # aiohttp decodes header bytes that are not UTF-8 as surrogates: this gives them back as sent.
        presented = given.strip().encode("utf-8", "surrogateescape")
        # Compare with every token, whatever the outcome, so timing tells nothing about which one matched.
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(presented, token)
        return matched
