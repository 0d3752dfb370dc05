"""``ingest``: the ingest server, and its limits (shared with ``operator --ingest-port``)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .options import STORE_KINDS, Subcommands, command, store_option

if TYPE_CHECKING:
    from ..ingest import IngestLimits

__all__ = ["add_ingest", "cmd_ingest", "ingest_limit_options", "ingest_limits"]


def add_ingest(sub: Subcommands) -> None:
    ingest = command(
        sub, "ingest", "run the ingest server: gateways POST records, committed before the answer",
        "Run the ingest server. Gateways POST native records (/v1/records), LiteLLM generic_api payloads "
        "(/v1/litellm) and OpenTelemetry GenAI spans (/v1/traces); each request is committed to the store "
        "before it is answered, and a record whose capture_id is stored already is not stored again. The "
        "ingest server writes the store: it creates the store (and its schema) when it does not exist. Every "
        "POST needs `Authorization: Bearer <token>`, a token of --token-file.",
        ["mkdir -p .capture-export",
         "python3 -c 'import secrets; print(secrets.token_hex(24))' > .capture-export/ingest-token",
         "capture-export ingest --token-file .capture-export/ingest-token --listen 127.0.0.1:8090"])
    store_option(ingest, f"capture store to write (created if missing): {STORE_KINDS}")
    ingest.add_argument("--listen", default="127.0.0.1:8090", metavar="HOST:PORT", help="address to listen on")
    ingest.add_argument("--token-file", required=True,
                        help="file of accepted bearer tokens, one per line; re-read when it changes")
    ingest_limit_options(ingest)
    ingest.set_defaults(handler=cmd_ingest)


def ingest_limits(args: argparse.Namespace) -> IngestLimits:
    """The ingest server's limits from the options of `ingest_limit_options`."""
    from ..ingest import IngestLimits

    return IngestLimits(max_body_bytes=args.max_body_bytes, max_decoded_bytes=args.max_decoded_bytes,
                        max_records=args.max_records, max_values=args.max_values,
                        max_pending_records=args.max_pending_records, max_pending_bytes=args.max_pending_bytes,
                        max_inflight_bytes=args.max_inflight_bytes, parse_workers=args.parse_workers)


def _listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit(f"error: --listen {text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def cmd_ingest(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from ..ingest import TokenFile, serve
    from ..store import check_store_location

    # A store that can never be opened (a directory named as the SQLite file) is refused now: the server
    # would otherwise listen and answer 503 for ever. One that is only down for now (PostgreSQL) is not.
    check_store_location(args.store)
    host, port = _listen_address(args.listen)
    try:
        tokens = TokenFile(args.token_file)
    except ValueError as exc:
        print(f"error: --token-file {exc}", file=sys.stderr)
        return 2

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)

        def announce(bound: int) -> None:
            print(f"ingest server on http://{host}:{bound} (POST /v1/records, /v1/litellm, /v1/traces), "
                  f"store {_safe_store_label(args.store)}", flush=True)

        await serve(args.store, host, port, tokens, ingest_limits(args), stop, announce=announce)

    asyncio.run(main())
    return 0


def _safe_store_label(url: str) -> str:
    if url.startswith(("postgresql://", "postgres://", "host=")):
        from ..store.postgres import safe_label

        return f"postgresql {safe_label(url)}"
    return url


def ingest_limit_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    from ..ingest import IngestLimits

    defaults = IngestLimits()
    parser.add_argument(f"--{prefix}max-body-bytes", dest="max_body_bytes", type=int, default=defaults.max_body_bytes,
                        help="largest request body as sent (413 past it)")
    parser.add_argument(f"--{prefix}max-decoded-bytes", dest="max_decoded_bytes", type=int,
                        default=defaults.max_decoded_bytes, help="largest body once decompressed (413 past it)")
    parser.add_argument(f"--{prefix}max-records", dest="max_records", type=int, default=defaults.max_records,
                        help="most records in one request (413 past it)")
    parser.add_argument(f"--{prefix}max-values", dest="max_values", type=int, default=defaults.max_values,
                        help="most values in one request (JSON values and keys, CBOR data items, protobuf fields), "
                             "counted before the body is parsed: what bounds the memory parsing it takes (413 past "
                             "it)")
    parser.add_argument(f"--{prefix}max-pending-records", dest="max_pending_records", type=int,
                        default=defaults.max_pending_records,
                        help="records waiting for the commit before requests get 503 + Retry-After")
    parser.add_argument(f"--{prefix}max-pending-bytes", dest="max_pending_bytes", type=int,
                        default=defaults.max_pending_bytes,
                        help="bytes of records waiting for the commit before requests get 503 + Retry-After")
    parser.add_argument(f"--{prefix}max-inflight-bytes", dest="max_inflight_bytes", type=int,
                        default=defaults.max_inflight_bytes,
                        help="bytes of request bodies being received or parsed at once before requests get 503 + "
                             "Retry-After (a request alone is never refused for it)")
    parser.add_argument(f"--{prefix}parse-workers", dest="parse_workers", type=int, default=defaults.parse_workers,
                        help="processes that decode and encode request bodies (0: in the server's own thread)")
