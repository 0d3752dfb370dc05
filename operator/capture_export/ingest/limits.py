"""The ingest server's limits: a module of their own, so that `capture-export`'s argument parser (which
shows their defaults) does not import the parsing code, its codecs and the store for every command."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["IngestLimits"]


@dataclass(frozen=True)
class IngestLimits:
    max_body_bytes: int = 16 << 20  # as received (compressed)
    max_decoded_bytes: int = 64 << 20  # after Content-Encoding is undone
    max_records: int = 10_000  # per request
    # Values (JSON values and keys, CBOR data items, protobuf fields) per request, counted before parsing:
    # what bounds the memory parsing takes (values.py). 10,000 real captures hold about 2 million.
    max_values: int = 4_000_000
    max_pending_records: int = 50_000  # waiting for the group commit; past it: 503
    max_pending_bytes: int = 256 << 20  # their encoded bodies, likewise
    max_inflight_bytes: int = 256 << 20  # request bodies being received or parsed at once; past it: 503
    max_group_records: int = 5_000  # per transaction
    # Processes that decode, check and encode bodies (CPU work, outside the event loop's GIL). 0: in the
    # event loop's own thread (no second core; a parsing thread would stall the loop on the GIL instead).
    parse_workers: int = 2
