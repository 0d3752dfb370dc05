"""The ``capture-export`` command.

``parser`` assembles the commands; each topic's module holds its commands' options and their
implementation: ``run`` (run, status), ``store`` (seed, store init, restore, quarantine), ``bucket`` (cat,
verify), ``ingest``, ``cluster`` (operator, crds) and ``local`` (demo, s3 serve). ``options`` holds the
option blocks they share, ``errors`` the one-line failures.

Importing the command imports argparse and these modules, nothing more: each command imports what it runs
inside its function (the API models, botocore, the store, kopf…). The encode pool's fork server imports
the command too (it is ``__main__``), and every command pays the start-up of what the others use
(tests/unit/test_import_costs.py).
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
from collections.abc import Sequence

from .cluster import operator_config
from .errors import error_line
from .parser import build_parser

__all__ = ["build_parser", "main", "operator_config"]


def _no_collection_at_exit() -> None:
    """Freeze every object still alive once the process exits: the interpreter's shutdown would otherwise
    run the cyclic garbage collector over all of them (botocore's service models, pydantic's schemas, the
    modules) several times, only to free memory the system takes back anyway. Measured: ~0.45 s of CPU at
    the end of every ``run --once``. Objects freed by reference counting still are, and atexit handlers
    and finalizers (weakref.finalize) still run: they are called, not collected."""
    gc.freeze()


_exit_hook_installed = False


def main(argv: Sequence[str] | None = None) -> int:
    from ..redact import describe_exception

    global _exit_hook_installed
    if not _exit_hook_installed:
        atexit.register(_no_collection_at_exit)  # runs when the process exits, after the command
        _exit_hook_installed = True
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except BrokenPipeError:
        # The reader went away (`capture-export cat … | head`): not an error. Keep Python from
        # complaining again while flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # never a traceback, whose text could quote a credential: the class and the place
        error = error_line(exc, args)
        print(error[0] if error is not None else f"error: unexpected {describe_exception(exc)}", file=sys.stderr)
        return error[1] if error is not None else 1

