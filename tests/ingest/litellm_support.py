"""Real LiteLLM calls (mock responses: no provider, no network) whose StandardLoggingPayloads LiteLLM's own
GenericAPILogger posts to an ingest server."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from tests.support.ingest import TOKEN  # sets LiteLLM's no-network environment before it is imported

MODELS = ("gpt-4o", "claude-sonnet-4-5", "gpt-4o-mini")


async def make_calls(count: int, *, tag: str, start: int = 0, failures_every: int = 7) -> None:
    """``count`` completions through LiteLLM; every ``failures_every``-th one fails with a rate limit."""
    import litellm

    for n in range(start, start + count):
        model = MODELS[n % len(MODELS)]
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "system", "content": "You answer briefly."},
                         {"role": "user", "content": f"question {n} of {tag}"}],
            "user": f"user-{n % 4}",
            "temperature": 0.2,
            "metadata": {"user_api_key_alias": "ci-key", "user_api_key_hash": f"keyhash-{n % 2}",
                         "user_api_key_user_email": f"user{n % 4}@example.com", "user_api_key_team_alias": "ml",
                         "tags": [tag]},
            "litellm_session_id": f"{tag}-session-{n // 5}",
        }
        if failures_every and n % failures_every == failures_every - 1:
            kwargs["mock_response"] = litellm.RateLimitError("slow down", llm_provider="openai", model=model)
            with contextlib.suppress(litellm.RateLimitError):
                await litellm.acompletion(**kwargs)
        else:
            kwargs["mock_response"] = f"answer {n} of {tag}"
            await litellm.acompletion(**kwargs)


def generic_logger(endpoint: str, log_format: str, *, batch_size: int = 25, max_retries: int = 0,
                   retry_delay: float = 0.2, token: str = TOKEN) -> Any:
    from litellm.integrations.generic_api.generic_api_callback import GenericAPILogger
    from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler

    # A client of its own, in the running loop (LiteLLM's shared one stays bound to a closed loop of an
    # earlier test).
    return GenericAPILogger(endpoint=endpoint, headers={"Authorization": f"Bearer {token}"}, log_format=log_format,
                            batch_size=batch_size, flush_interval=3600, max_retries=max_retries,
                            retry_delay=retry_delay, async_httpx_client=AsyncHTTPHandler(timeout=30))


async def drain(logger: Any) -> None:
    """Let LiteLLM's logging tasks finish, then send what the logger still holds."""
    for _ in range(100):
        await asyncio.sleep(0.05)
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()
                   and "periodic_flush" not in repr(t)]
        if not pending:
            break
    await logger.flush_queue()


def recorder() -> Any:
    """A LiteLLM callback keeping every StandardLoggingPayload it sees (what GenericAPILogger posts)."""
    from litellm.integrations.custom_logger import CustomLogger

    class Recorder(CustomLogger):
        def __init__(self) -> None:
            super().__init__()
            self.payloads: list[dict[str, Any]] = []

        async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
            self.payloads.append(kwargs["standard_logging_object"])

        async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
            self.payloads.append(kwargs["standard_logging_object"])

    return Recorder()


def use_callbacks(*callbacks: Any) -> None:
    """Make these LiteLLM's only callbacks (LiteLLM keeps callbacks in several module-level lists and
    ignores a second instance of a class it already has)."""
    import litellm

    litellm.logging_callback_manager._reset_all_callbacks()
    litellm.callbacks = list(callbacks)
