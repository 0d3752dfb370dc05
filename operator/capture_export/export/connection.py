"""The connection test (as OpenRouter's "Test Connection"): before the first export and after every change
of destination, credentials, role, encryption or CA, the exporter writes a small probe object under its
control folder, reads it back, lists the folder and deletes the probe: each the very kind of request an
export makes (data and checkpoint PUTs, the checkpoint read on recovery, the sweep's listing and deletes).

Every step is tried even when an earlier one was denied, so one message names every missing permission.
Denials are ``BucketReachable=False`` with the first missing permission's reason (``WriteDenied`` for
s3:PutObject, then ``ReadDenied``, ``ListDenied``, ``DeleteDenied``): a bucket the credentials can read but
not write is never reported as working, and a write-only policy is refused rather than left to fail in a
loop. Other failures (a missing bucket, rejected or expired credentials, a role STS will not let us assume,
an untrusted certificate) keep their own reason and condition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..api.vocabulary import Domain, Reason
from ..objectstore import ObjectStore, ObjectStoreError
from .model import ExportFailure

__all__ = ["PROBE_BODY", "ConnectionReport", "run_connection_test"]

PROBE_BODY = b"capture-export connection test; safe to delete\n"

# (step, the S3 permission it needs, the reason when it is denied)
_STEPS = (
    ("write", "s3:PutObject", Reason.WRITE_DENIED),
    ("read", "s3:GetObject", Reason.READ_DENIED),
    ("list", "s3:ListBucket", Reason.LIST_DENIED),
    ("delete", "s3:DeleteObject", Reason.DELETE_DENIED),
)
_DENIED = {"AccessDenied"}


@dataclass(frozen=True)
class ConnectionReport:
    """What a passed connection test did, for the BucketReachable message."""

    bucket: str
    key: str
    encryption: str | None = None
    tls_unverified: bool = False

    @property
    def message(self) -> str:
        sse = f" with server-side encryption {self.encryption}" if self.encryption else ""
        warning = "; TLS certificate NOT verified (insecureSkipTLSVerify)" if self.tls_unverified else ""
        return (f"connection test passed: wrote{sse}, read, listed and deleted s3://{self.bucket}/{self.key} "
                f"(s3:PutObject, s3:GetObject, s3:ListBucket, s3:DeleteObject){warning}")


def run_connection_test(objects: ObjectStore, bucket: str, key: str, *, encryption: str | None = None,
                        tls_unverified: bool = False,
                        call: Callable[[Callable[[], object]], object] = lambda op: op()) -> ConnectionReport:
    """Run the probe; ExportFailure when the bucket cannot be used. ``call`` wraps each request (the
    engine's retrying request counter)."""
    folder = key.rsplit("/", 1)[0] + "/" if "/" in key else ""

    def write() -> None:
        objects.put(key, PROBE_BODY, content_type="text/plain")

    def read() -> None:
        written = not denied  # (the write is the first step)
        if objects.get(key) is None and written:
            # Another runner of this exporter, starting at the same moment, probes the same key and may have
            # deleted it in between (it then meets this runner's lease): write and read once more. A store
            # that loses what was written a moment ago twice is not usable.
            write()
            if objects.get(key) is None:
                raise ObjectStoreError("ProbeNotReadBack", f"the probe object s3://{bucket}/{key} was written "
                                       "but could not be read back", transient=False, domain=Domain.BUCKET)

    def listing() -> None:
        for _ in objects.list(folder):
            break

    denied: list[tuple[str, str, str, str]] = []  # (step, permission, reason, detail)
    operations: dict[str, Callable[[], object]] = {
        "write": write,
        "read": read,
        "list": listing,
        "delete": lambda: objects.delete(key),
    }
    for step, permission, reason in _STEPS:
        try:
            call(operations[step])
        except ExportFailure as failure:
            if failure.reason not in _DENIED:
                raise  # not a permission: a missing bucket, bad credentials, an unreachable endpoint
            denied.append((step, permission, reason, failure.message))
        except ObjectStoreError as exc:
            if exc.reason not in _DENIED:
                raise ExportFailure.from_object_store(exc) from None
            denied.append((step, permission, reason, exc.message))
    if denied:
        missing = ", ".join(permission for _, permission, _, _ in denied)
        done = [step for step, _, _ in _STEPS if step not in {d[0] for d in denied}]
        allowed = f" ({', '.join(done)} allowed)" if done else ""
        raise ExportFailure(
            denied[0][2],
            f"connection test on s3://{bucket}/{key}: denied {', '.join(d[0] for d in denied)}{allowed}; the "
            f"credentials lack {missing} on this bucket and prefix, which every export needs "
            f"(see the IAM policy in docs/storage-providers.md)",
            domain=Domain.BUCKET,
            transient=False,
        )
    return ConnectionReport(bucket, key, encryption, tls_unverified)
