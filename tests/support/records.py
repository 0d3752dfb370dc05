"""Capture records for tests: small, complete schema-v2 records built by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

__all__ = ["make_record"]


def make_record(n: int, **overrides: object) -> dict[str, object]:
    """A small, complete v2 record (tests that need realistic volume use capture_export.seed)."""
    record: dict[str, object] = {
        "ver": 2,
        "timestamp": datetime(2026, 11, 24, 12, 0, tzinfo=UTC) + timedelta(seconds=n),
        "identity": {"login_name": f"user{n % 3}@example.com", "node_id": f"n{n % 5:04d}", "tags": ["tag:prod"]},
        "model": "gpt-4o",
        "api_type": "oai_completions",
        "usage": {"input_tokens": 10 + n, "output_tokens": 5, "cached_tokens": 0, "reasoning_tokens": 0},
        "estimated_cost": {"input": 0.001, "output": 0.002, "total": 0.003, "currency": "USD"},
        "duration_ms": 100 + n,
        "capture_id": f"cap-{n}",
        "session_id": f"sess-{n // 4}",
        "path": "/v1/chat/completions",
        "status_code": 200,
        "capture": {
            "request": {"headers": {"content-type": "application/json", "Authorization": "Bearer sk-secret"},
                        "body": {"messages": [{"role": "user", "content": f"hello {n}"}]}},
            "response": {"headers": {"Set-Cookie": "session=abc"}, "body": {"choices": [{"text": "hi"}]},
                         "raw_body": bytes([n % 256]) * 8},
        },
    }
    record.update(overrides)
    return record
