"""How long a resource waits before it is tried again, in one place: after a failed cycle (export and
retention alike) and after a turn that raised (the operator's workers and the standalone runner alike)."""

from __future__ import annotations

__all__ = ["CONTAINED_RETRY", "MAX_FAILURE_BACKOFF", "FailureBackoff"]

MAX_FAILURE_BACKOFF = 300.0
# A turn that raised past the cycle's own containment (the last line of defence): tried again this soon.
CONTAINED_RETRY = 30.0


class FailureBackoff:
    """Failed cycles in a row, and the wait they earn: 5 s, doubling per failure, at most
    ``MAX_FAILURE_BACKOFF`` and never longer than the resource's own interval."""

    def __init__(self) -> None:
        self.consecutive_failures = 0

    def failed(self, every: float) -> float:
        """One more failure in a row: the seconds until the next try."""
        self.consecutive_failures += 1
        return min(float(every), MAX_FAILURE_BACKOFF, 5.0 * 2.0 ** (self.consecutive_failures - 1))

    def succeeded(self) -> None:
        self.consecutive_failures = 0
