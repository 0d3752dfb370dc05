"""A throwaway PostgreSQL cluster (Debian's ``postgresql`` binaries) for tests and benchmarks.

``TempPostgres`` runs ``initdb`` in a fresh temporary directory, starts the server on a free loopback
port with its unix socket in that directory, and removes everything on ``stop``. PostgreSQL refuses to
run as root, so as root the cluster runs as the ``postgres`` user (or ``nobody``). The fixtures:
``pg_cluster`` (one per session) and ``pg_dsn`` (a fresh database per test). When the binaries are
missing the fixture fails, naming ``scripts/ensure-postgres.sh``, which installs them.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

__all__ = ["PostgresNotFound", "TempPostgres", "find_pg_bindir", "pg_cluster", "pg_dsn"]

REQUIRED = ("initdb", "pg_ctl", "postgres")

# Runs beside the cluster and outlives the test process if it is killed (a timeout, kill -9, a crash):
# stdin reaches EOF when the test process is gone, however it went, and the cluster is stopped and its
# directory removed, instead of a postmaster left running for ever.
_WATCHDOG = """
import shutil, subprocess, sys
sys.stdin.read()
user = {"user": sys.argv[4]} if sys.argv[4] else {}
subprocess.run([sys.argv[1], "-D", sys.argv[2], "-m", "immediate", "-w", "stop"], capture_output=True, **user)
shutil.rmtree(sys.argv[3], ignore_errors=True)
"""


class PostgresNotFound(RuntimeError):
    pass


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", str(path))) or (0,)


def find_pg_bindir() -> Path:
    """Where ``initdb``, ``pg_ctl`` and ``postgres`` live: $PG_BINDIR, ``pg_config --bindir``, the PATH,
    then the usual Debian/RHEL/Homebrew locations, newest version first."""
    candidates: list[Path] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(Path(os.environ["PG_BINDIR"]))
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10).stdout
            candidates.append(Path(out.strip()))
    for name in REQUIRED:
        found = shutil.which(name)
        if found:
            candidates.append(Path(found).resolve().parent)
    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin",
                    "/opt/homebrew/opt/postgresql@*/bin"):
        directories = [Path(p) for p in Path("/").glob(pattern.lstrip("/"))]
        candidates.extend(sorted(directories, key=_version_key, reverse=True))
    for directory in candidates:
        if all((directory / name).is_file() and os.access(directory / name, os.X_OK) for name in REQUIRED):
            return directory
    raise PostgresNotFound(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found; run scripts/ensure-postgres.sh "
        "(installs Debian's postgresql) or set PG_BINDIR"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise PostgresNotFound("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


class TempPostgres:
    """``with TempPostgres() as pg: pg.dsn()`` — a private cluster, always stopped and removed."""

    def __init__(self, *, port: int | None = None, settings: dict[str, str] | None = None) -> None:
        self.bindir = find_pg_bindir()
        self.user = _run_as()
        self.port = port or _free_port()
        self.settings = {
            "listen_addresses": "127.0.0.1",
            "fsync": "off",  # throwaway data: survive a server crash, not an OS crash
            "full_page_writes": "off",
            "max_connections": "200",
            "max_prepared_transactions": "10",
            "log_min_messages": "warning",
            **(settings or {}),
        }
        self.root = Path(tempfile.mkdtemp(prefix="capture-export-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.role = "capture"
        self._started = False
        self._watchdog: subprocess.Popen[bytes] | None = None

    # -- process control -----------------------------------------------------------------------------

    def _as_user(self) -> dict[str, object]:
        if not self.user:
            return {}
        return {"user": self.user, "group": pwd.getpwnam(self.user).pw_gid, "extra_groups": []}

    def _cmd(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        kwargs = self._as_user()
        result = subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, cwd=self.root,
            env={**os.environ, "LC_ALL": "C"}, **kwargs,  # type: ignore[arg-type]
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({result.returncode}): {result.stderr.strip()}\n"
                               f"{self._log_tail()}")
        return result

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "log tail:\n" + "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        return ""

    def _options(self) -> str:
        opts = [f"-p {self.port}", f"-k {self.root}"] + [f"-c {k}={v}" for k, v in self.settings.items()]
        return " ".join(opts)

    def start(self) -> TempPostgres:
        if self.user:
            os.chown(self.root, pwd.getpwnam(self.user).pw_uid, pwd.getpwnam(self.user).pw_gid)
        os.chmod(self.root, 0o755)
        if not self.data.exists():
            self._cmd(str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.role, "--auth=trust",
                      "-E", "UTF8", "--no-locale", "--no-sync")
        for attempt in range(3):
            result = self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                               "-t", "60", "-o", self._options(), "start", check=False)
            if result.returncode == 0:
                self._started = True
                self._start_watchdog()
                return self
            if attempt < 2 and "could not bind" in self._log_tail():
                self.port = _free_port()  # lost a race for the port
                continue
            raise RuntimeError(f"pg_ctl start failed: {result.stderr.strip()}\n{self._log_tail()}")
        raise AssertionError("unreachable")

    def _start_watchdog(self) -> None:
        if self._watchdog is None:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-c", _WATCHDOG, str(self.bindir / "pg_ctl"), str(self.data), str(self.root),
                 self.user or ""],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.root,
                start_new_session=True,
            )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``, ``smart`` or ``immediate``: a crash as far as data goes)."""
        if self._started:
            self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)
            self._started = False

    def restart(self, mode: str = "fast", down_seconds: float = 0.0) -> None:
        self.stop(mode)
        if down_seconds:
            time.sleep(down_seconds)
        self.start()

    def kill9(self) -> None:
        """SIGKILL the postmaster (its children die with it): the harshest crash."""
        pid_file = self.data / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
        self._started = False

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            with contextlib.suppress(OSError):
                watchdog.stdin.close()  # type: ignore[union-attr]
            with contextlib.suppress(subprocess.TimeoutExpired):
                watchdog.wait(timeout=30)

    def __enter__(self) -> TempPostgres:
        try:
            return self.start()
        except BaseException:
            self.remove()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()

    # -- connecting ----------------------------------------------------------------------------------

    def dsn(self, dbname: str = "postgres", *, port: int | None = None) -> str:
        return f"postgresql://{self.role}@127.0.0.1:{port or self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)


_databases = itertools.count(1)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[TempPostgres]:
    """A PostgreSQL cluster for the whole session. Fails (does not skip) when PostgreSQL is missing."""
    try:
        cluster = TempPostgres()
    except PostgresNotFound as exc:
        pytest.fail(str(exc), pytrace=False)
    with cluster:
        yield cluster


@pytest.fixture
def pg_dsn(pg_cluster: TempPostgres) -> str:
    """A fresh, empty database in the session's cluster."""
    return pg_cluster.create_database(f"test_{os.getpid()}_{next(_databases)}")
