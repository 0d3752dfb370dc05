"""The ingest server: gateways POST records over HTTP; a 2xx means they are committed to the store.

Routes (every POST needs ``Authorization: Bearer <token>``):

* ``POST /v1/records``  native schema-v2 records (native.py)
* ``POST /v1/litellm``  LiteLLM ``generic_api`` payloads (litellm.py)
* ``GET /healthz``      liveness; ``GET /metrics`` Prometheus (standalone only; inside the operator its
  metrics are on the operator's port)

A request goes: token check, body read within ``max_body_bytes`` (413 past it), ``Content-Encoding``
undone (gzip, deflate, zstd) within ``max_decoded_bytes``, parsed and checked (400 naming the first bad
record and field, 413 past ``max_records``), encoded as the store keeps records (credential headers
stripped), then committed with other requests in one transaction (writer.py). The answer comes after
the commit: ``200 {"received": n, "new": a, "duplicates": d}``. Nothing of a refused request is stored.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import zstandard
from aiohttp import web

from ..store.records import encode_body
from .auth import TokenFile
from .errors import BadInput, IngestRefused, StoreUnavailable, TooLarge, Unauthorized, UnsupportedMediaType
from .litellm import parse_litellm
from .metrics import IngestMetrics
from .native import parse_records
from .writer import GroupCommitter, Row, UniqueAppender

__all__ = ["IngestLimits", "IngestServer", "Outcome", "Parsed", "Source", "default_sources", "serve", "store_opener"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestLimits:
    max_body_bytes: int = 16 << 20  # as received (compressed)
    max_decoded_bytes: int = 64 << 20  # after Content-Encoding is undone
    max_records: int = 10_000  # per request
    max_pending_records: int = 50_000  # waiting for the group commit; past it: 503
    max_group_records: int = 5_000  # per transaction


@dataclass
class Parsed:
    """What a request's body holds: records to store, and items that are not records (ignored)."""

    records: list[dict[str, Any]]
    ignored: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # source-specific facts for its answer


@dataclass
class Outcome:
    received: int
    new: int
    ignored: int = 0

    @property
    def duplicates(self) -> int:
        return self.received - self.new


@dataclass(frozen=True)
class Source:
    """One kind of input: how to parse a body, and how to answer."""

    name: str
    path: str
    parse: Callable[[bytes, str, int], Parsed]
    allow_empty: bool = False  # an empty batch is fine (OTLP), else 400

    def ok(self, request: web.Request, parsed: Parsed, outcome: Outcome) -> web.Response:
        body: dict[str, Any] = {"received": outcome.received, "new": outcome.new, "duplicates": outcome.duplicates}
        if outcome.ignored:
            body["ignored"] = outcome.ignored
        return web.json_response(body)

    def refused(self, request: web.Request, error: IngestRefused) -> web.Response:
        headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else {}
        if isinstance(error, Unauthorized):
            headers["WWW-Authenticate"] = 'Bearer realm="capture-export ingest"'
        return web.json_response(error.body(), status=error.status, headers=headers)


def _records_source() -> Source:
    return Source("records", "/v1/records", lambda body, ctype, limit: Parsed(parse_records(body, ctype, limit)))


def _litellm_source() -> Source:
    return Source("litellm", "/v1/litellm", lambda body, ctype, limit: Parsed(parse_litellm(body, limit)))


# -- bodies --------------------------------------------------------------------------------------------

async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"body of {request.content_length} bytes is larger than the limit of {limit}")
    buffer = bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        buffer += chunk
        if len(buffer) > limit:
            raise TooLarge(f"body larger than the limit of {limit} bytes")
    return bytes(buffer)


def _decode(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo ``Content-Encoding`` without ever holding more than ``limit`` decoded bytes (zip bombs)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    too_large = TooLarge(f"body larger than the limit of {limit} bytes once decompressed")
    try:
        if encoding in ("gzip", "x-gzip", "deflate"):
            out = bytearray()
            data = body
            while data:
                wbits = 47 if encoding != "deflate" else 15  # gzip or zlib header (47: either, auto)
                decompressor = zlib.decompressobj(wbits)
                out += decompressor.decompress(data, limit + 1 - len(out))
                if len(out) > limit or decompressor.unconsumed_tail:
                    raise too_large
                if not decompressor.eof:
                    raise BadInput(f"truncated {encoding} body")
                data = decompressor.unused_data  # a concatenated gzip member follows
            return bytes(out)
        if encoding == "zstd":
            reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body), read_across_frames=True)
            out = reader.read(limit + 1)
            if len(out) > limit:
                raise too_large
            return out
    except (zlib.error, zstandard.ZstdError) as exc:
        raise BadInput(f"body is not valid {encoding}: {exc}") from None
    raise UnsupportedMediaType(f"Content-Encoding {encoding} is not supported (gzip, deflate, zstd are)")


def _encode_rows(records: Sequence[dict[str, Any]]) -> list[Row]:
    rows: list[Row] = []
    for index, record in enumerate(records):
        try:
            ts, body = encode_body(record)
        except (ValueError, TypeError, OverflowError) as exc:
            raise BadInput(f"cannot be stored: {exc}", index=index) from None
        rows.append((ts, body, record["capture_id"]))
    return rows


# -- the server ----------------------------------------------------------------------------------------

class IngestServer:
    """The aiohttp application and its group-commit writer. Start and stop it inside a running loop."""

    def __init__(
        self,
        open_store: Callable[[], UniqueAppender],
        tokens: TokenFile,
        *,
        limits: IngestLimits | None = None,
        metrics: IngestMetrics | None = None,
        serve_metrics: bool = False,
        sources: Sequence[Source] | None = None,
    ) -> None:
        self.limits = limits or IngestLimits()
        self.tokens = tokens
        self.metrics = metrics or IngestMetrics()
        self.serve_metrics = serve_metrics
        self.sources = list(sources) if sources is not None else default_sources()
        self.writer = GroupCommitter(open_store, max_pending_records=self.limits.max_pending_records,
                                     max_group_records=self.limits.max_group_records,
                                     on_commit=lambda *_: self.metrics.commits.inc())
        # Parsing and encoding run off the event loop, so a large body does not stall other requests.
        self._parsers = ThreadPoolExecutor(2, thread_name_prefix="ingest-parse")
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.max_body_bytes)
        for source in self.sources:
            app.router.add_post(source.path, self._handler(source))
        app.router.add_get("/healthz", self._healthz)
        if self.serve_metrics:
            app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self, host: str = "0.0.0.0", port: int = 8090) -> int:
        # auto_decompress off: Content-Encoding is undone here, within the decoded-size limit.
        self._runner = web.AppRunner(self.app(), access_log=None, auto_decompress=False, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=512)
        await site.start()
        sockets = site._server.sockets if site._server is not None else ()  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("ingest server listening on %s:%s", host, self.port)
        return self.port

    async def stop(self) -> None:
        """Stop taking requests, let those in flight commit and answer, then close the store."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await asyncio.to_thread(self.writer.close)
        self._parsers.shutdown(wait=False)

    # -- handlers --

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "pending_records": self.writer.pending_records})

    async def _metrics(self, request: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _handler(self, source: Source) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            started = time.monotonic()
            received = 0
            try:
                if not self.tokens.allows(request.headers.get("Authorization")):
                    raise Unauthorized("a valid bearer token is required (Authorization: Bearer <token>)")
                body = await _read_body(request, self.limits.max_body_bytes)
                encoding = request.headers.get("Content-Encoding", "")
                content_type = request.content_type
                loop = asyncio.get_running_loop()
                parsed, rows = await loop.run_in_executor(
                    self._parsers, self._prepare, source, body, encoding, content_type
                )
                received = len(rows)
                self.metrics.pending.set(self.writer.pending_records + received)
                new = await self.writer.commit(rows) if rows else 0
                outcome = Outcome(received, new, parsed.ignored)
                response = source.ok(request, parsed, outcome)
                self.metrics.duplicates.labels(source.name).inc(outcome.duplicates)
                if parsed.ignored:
                    self.metrics.ignored.labels(source.name).inc(parsed.ignored)
            except IngestRefused as refusal:
                response = source.refused(request, refusal)
            except Exception:
                log.exception("ingest: request to %s failed", source.path)
                response = source.refused(request, StoreUnavailable("internal error; nothing was stored"))
            code = str(response.status)
            self.metrics.requests.labels(source.name, code).inc()
            if received:
                self.metrics.records.labels(source.name, code).inc(received)
            self.metrics.latency.labels(source.name).observe(time.monotonic() - started)
            self.metrics.pending.set(self.writer.pending_records)
            return response

        return handle

    def _prepare(self, source: Source, body: bytes, encoding: str, content_type: str) -> tuple[Parsed, list[Row]]:
        decoded = _decode(body, encoding, self.limits.max_decoded_bytes)
        del body
        parsed = source.parse(decoded, content_type, self.limits.max_records)
        if not parsed.records and not source.allow_empty:
            raise BadInput("no records in the body")
        return parsed, _encode_rows(parsed.records)


def default_sources() -> list[Source]:
    sources = [_records_source(), _litellm_source()]
    try:
        from .otlp import otlp_source
    except ImportError:  # the OTLP receiver needs opentelemetry-proto
        return sources
    return [*sources, otlp_source()]


def store_opener(url: str) -> Callable[[], UniqueAppender]:
    """Open the store the ingest server writes to (created when missing: the ingest server is a writer)."""

    def open_store() -> UniqueAppender:
        from ..store import open_store_url

        store = open_store_url(url)
        if not callable(getattr(store, "append_unique", None)):
            store.close()
            raise StoreUnavailable(f"{store!r} cannot take ingested records (no insert-or-ignore by capture_id)")
        return store  # type: ignore[return-value]

    return open_store


async def serve(url: str, host: str, port: int, tokens: TokenFile, limits: IngestLimits,
                stop: asyncio.Event, *, announce: Callable[[int], None] | None = None) -> None:
    """Run a standalone ingest server (``capture-export ingest``) until ``stop`` is set."""
    server = IngestServer(store_opener(url), tokens, limits=limits, serve_metrics=True)
    bound = await server.start(host, port)
    if announce is not None:
        announce(bound)
    try:
        await stop.wait()
    finally:
        await server.stop()
