"""Helper processes that end with the process that started them, however it ends, and leave Ctrl-C to it.

The encode pool's workers and the ingest server's parsing processes wait on pipes that they hold both ends
of; when their parent is killed (``kill -9``, the OOM killer) nothing tells them, and they would idle as
orphans for ever, each holding its memory (and, for the fork server's workers, the fork server too).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time

__all__ = ["end_with", "leave_interrupts_to_the_parent"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch(pid: int, pidfd: int | None) -> None:
    if pidfd is not None:
        with contextlib.suppress(OSError):
            select.select([pidfd], [], [])  # readable once the process has ended (even unreaped)
    else:
        while _alive(pid):
            time.sleep(1.0)
    os._exit(1)


def end_with(pid: int) -> None:
    """Exit this process at once when process ``pid`` ends; call it first thing in a helper process."""
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)  # it ended before we got here
    except (AttributeError, OSError):  # not Linux 5.3+: poll
        pidfd = None
    threading.Thread(target=_watch, args=(pid, pidfd), name=f"end-with-{pid}", daemon=True).start()


def leave_interrupts_to_the_parent() -> None:
    """Ignore SIGINT in this helper process. Ctrl-C at a terminal sends SIGINT to the whole process group,
    helpers included: the parent stops them itself once its work in flight is done, and a helper
    interrupted meanwhile would only print a KeyboardInterrupt traceback (or lose that work)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
