"""Conditions as the Kubernetes API conventions define them: a list keyed by ``type``, whose
``lastTransitionTime`` changes only when ``status`` flips. Pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ..api import Condition
from ..api.vocabulary import Reason, Truth

__all__ = ["ConditionChange", "get_condition", "set_condition", "summarize_ready"]


@dataclass(frozen=True)
class ConditionChange:
    """A condition whose status flipped (or first appeared): worth an Event."""

    condition: Condition
    previous_status: str | None


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: str,
    reason: str,
    message: str,
    *,
    now: datetime,
    generation: int | None,
) -> tuple[list[Condition], ConditionChange | None]:
    """Return the conditions with ``type_`` set, and the change if its status flipped."""
    existing = get_condition(conditions, type_)
    flipped = existing is None or existing.status != status
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=now if flipped or existing is None else existing.last_transition_time,
        observed_generation=generation,
    )
    result = [updated if c.type == type_ else c for c in conditions]
    if existing is None:
        result.append(updated)
    change = ConditionChange(updated, existing.status if existing else None) if flipped else None
    return result, change


def summarize_ready(conditions: list[Condition], domains: Sequence[str]) -> tuple[str, str, str]:
    """``Ready`` from the failure-domain conditions: False if any is False (first one's reason wins),
    Unknown if any is still Unknown, else True."""
    for type_ in domains:
        condition = get_condition(conditions, type_)
        if condition is not None and condition.status == Truth.FALSE:
            return Truth.FALSE, condition.reason, f"{type_}: {condition.message}"
    for type_ in domains:
        condition = get_condition(conditions, type_)
        if condition is None or condition.status == Truth.UNKNOWN:
            return Truth.UNKNOWN, Reason.PENDING, f"{type_} not yet checked"
    return Truth.TRUE, Reason.READY, "all checks pass"
