"""Run a test's function in a fresh Python process: its memory, page faults and collector are its own, and it
may start its own fork server and encode pool (which a multiprocessing.Pool worker, a daemon, may not)."""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["in_fresh_process"]


def in_fresh_process(function: Callable[..., Any], *args: Any, timeout: float = 120.0) -> Any:
    """``function(*args)`` (module-level, its arguments picklable) in a new spawned process; its result, or
    an AssertionError with the child's traceback."""
    spawn = multiprocessing.get_context("spawn")
    receiving, sending = spawn.Pipe(duplex=False)
    child = spawn.Process(target=_send_result, args=(sending, function, *args))
    child.start()
    sending.close()
    try:
        answer = receiving.recv() if receiving.poll(timeout) else ("timeout", f"no answer within {timeout:.0f}s")
    except EOFError:
        answer = ("error", "the process ended without an answer")
    finally:
        child.join(60)
        if child.is_alive():
            child.kill()
            child.join()
    outcome, value = answer
    assert outcome == "ok", f"{function.__name__} in a fresh process: {value}"
    assert child.exitcode == 0, f"{function.__name__} in a fresh process exited with {child.exitcode}"
    return value


def _send_result(conn: Connection, function: Callable[..., Any], *args: Any) -> None:
    try:
        result = ("ok", function(*args))
    except BaseException:
        result = ("error", traceback.format_exc())
    conn.send(result)
