"""Prometheus metrics of the operator, labelled by the resource's namespace and name.

One :class:`OperatorMetrics` per operator process, on its own ``CollectorRegistry`` (so that several
operators in one test process do not collide), served by prometheus-client's HTTP server at
``:9090/metrics``. Other kinds add their own families to :attr:`OperatorMetrics.registry`.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .api.vocabulary import ExportOutcome
from .export import BatchResult, RunResult

__all__ = ["OperatorMetrics"]

_LABELS = ("namespace", "name")
OUTCOMES = tuple(ExportOutcome)
_CYCLE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.records = Counter("capture_export_records_exported", "Capture records exported to the bucket.",
                               _LABELS, registry=r)
        self.bytes = Counter("capture_export_bytes_exported", "Compressed bytes of data objects written.",
                             _LABELS, registry=r)
        self.objects = Counter("capture_export_objects_written", "Data objects written.", _LABELS, registry=r)
        self.quarantined = Counter("capture_export_records_quarantined", "Records that failed the check and were "
                                   "moved to the store's quarantine (onCorruptRecord: Quarantine).", _LABELS,
                                   registry=r)
        self.runs = Counter("capture_export_runs", "Export runs by outcome (Succeeded, Failed, NothingToDo, "
                            "Stopped).", (*_LABELS, "outcome"), registry=r)
        self.backlog = Gauge("capture_export_backlog_records", "Records waiting to be exported.", _LABELS,
                             registry=r)
        self.cycle_seconds = Histogram("capture_export_cycle_duration_seconds", "Duration of one export cycle.",
                                       _LABELS, buckets=_CYCLE_BUCKETS, registry=r)
        self.last_success = Gauge("capture_export_last_success_timestamp_seconds",
                                  "Unix time of the last run that exported records.", _LABELS, registry=r)
        self.exporters = Gauge("capture_export_exporters", "S3Exporter workers in this operator.", registry=r)
        self.cycles_in_flight = Gauge("capture_export_cycles_in_flight", "Export cycles running now.", registry=r)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # -- recording ----------------------------------------------------------------------------------

    def batch(self, namespace: str, name: str, batch: BatchResult) -> None:
        """A committed batch (called from the worker thread, so that long backfills show progress)."""
        self.records.labels(namespace, name).inc(batch.rows)
        self.bytes.labels(namespace, name).inc(batch.bytes)
        self.objects.labels(namespace, name).inc()
        if batch.quarantined:
            self.quarantined.labels(namespace, name).inc(len(batch.quarantined))

    def cycle(self, namespace: str, name: str, result: RunResult | None, seconds: float) -> None:
        outcome = result.outcome if result is not None else ExportOutcome.FAILED
        self.runs.labels(namespace, name, outcome).inc()
        self.cycle_seconds.labels(namespace, name).observe(seconds)
        if result is not None and result.backlog is not None:
            self.backlog.labels(namespace, name).set(result.backlog)
        if result is not None and result.rows and result.end is not None:
            self.last_success.labels(namespace, name).set(result.end.timestamp())

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted resource's series."""
        for family in (self.records, self.bytes, self.objects, self.quarantined, self.backlog, self.cycle_seconds,
                       self.last_success):
            with contextlib.suppress(KeyError):
                family.remove(namespace, name)
        for outcome in OUTCOMES:
            with contextlib.suppress(KeyError):
                self.runs.remove(namespace, name, outcome)

    # -- serving ------------------------------------------------------------------------------------

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Start the ``/metrics`` endpoint; returns the bound port (useful with port 0)."""
        self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        return int(self._server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
