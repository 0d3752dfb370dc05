"""``GET /readyz``: whether the operator serves, for the pod's readiness probe.

kopf's ``/healthz`` (the liveness probe) answers 200 as soon as its HTTP server is up, even while every
call to the Kubernetes API fails: it tells that the process lives, not that it serves. Ready means here:
the operator has started (its startup handlers ran, so kopf is watching), and its last call to the API
listing the kinds it serves, where it watches them, succeeded, which needs the API server, the CRDs and
the RBAC at once. The call is made at most every ``interval`` seconds, however often the probe asks.

The endpoint is served from kopf's event loop (a stuck loop answers nothing), the check itself on a
thread with the API client's own timeouts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp.web

__all__ = ["Readiness"]

log = logging.getLogger(__name__)


class Readiness:
    """Serve ``/readyz``: 200 once :meth:`started` and while ``check`` (a blocking call that raises when
    the API cannot be used) last succeeded, else 503 with the reason."""

    def __init__(self, check: Callable[[], None], *, interval: float = 5.0) -> None:
        self.check = check
        self.interval = interval
        self.is_started = False
        self._checked_at: float | None = None
        self._problem: str | None = "not checked yet"
        self._lock = asyncio.Lock()
        self._runner: aiohttp.web.AppRunner | None = None

    def started(self) -> None:
        self.is_started = True

    async def state(self) -> str | None:
        """None when ready, else why not."""
        if not self.is_started:
            return "starting"
        async with self._lock:
            now = time.monotonic()
            if self._checked_at is None or now - self._checked_at >= self.interval:
                try:
                    await asyncio.to_thread(self.check)
                except Exception as exc:  # the message of our own API errors: never a secret
                    problem = f"the Kubernetes API cannot be used: {exc}"
                    if problem != self._problem:
                        log.warning("not ready: %s", problem)
                    self._problem = problem
                else:
                    if self._problem is not None and self._checked_at is not None:
                        log.info("ready again")
                    self._problem = None
                self._checked_at = time.monotonic()
            return self._problem

    async def _serve(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        problem = await self.state()
        if problem is None:
            return aiohttp.web.Response(text="ok\n")
        return aiohttp.web.Response(status=503, text=f"not ready: {problem}\n")

    async def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Start listening; returns the bound port (useful with port 0)."""
        app = aiohttp.web.Application()
        app.add_routes([aiohttp.web.get("/readyz", self._serve)])
        self._runner = aiohttp.web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server  # aiohttp keeps the asyncio.Server private
        sockets = server.sockets if isinstance(server, asyncio.Server) else []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

