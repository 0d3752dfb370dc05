"""Prometheus metrics of the ingest server (on the operator's registry inside the operator)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["IngestMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("capture_export_ingest_requests", "Ingest requests by source (records, litellm, "
                                "otlp) and HTTP response code.", ("source", "code"), registry=r)
        self.records = Counter("capture_export_ingest_records", "Records received, by source and the response "
                               "code of their request (2xx: committed or already stored).", ("source", "code"),
                               registry=r)
        self.duplicates = Counter("capture_export_ingest_duplicates", "Records not stored again because their "
                                  "capture_id was stored already (client retries).", ("source",), registry=r)
        self.ignored = Counter("capture_export_ingest_ignored", "Items of an accepted request that are not "
                               "records (OTLP spans that are not GenAI spans).", ("source",), registry=r)
        self.latency = Histogram("capture_export_ingest_request_duration_seconds", "Ingest request latency, "
                                 "from the request's arrival to its answer (after the commit).", ("source",),
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.pending = Gauge("capture_export_ingest_pending_records", "Records waiting for the group commit.",
                             registry=r)
        self.commits = Counter("capture_export_ingest_commits", "Store transactions of the group commit.",
                               registry=r)
