"""A real Kubernetes API server for tests: etcd and kube-apiserver as plain processes on loopback.

The binaries come from ``scripts/build-apiserver.sh`` (built from the Go modules pinned in
``tests/apiserver/go.mod``, cached by version). :class:`TempApiServer` makes a private CA with ``openssl``
(a serving certificate for 127.0.0.1, an admin client certificate in ``system:masters``, a service-account
signing key), starts etcd and then kube-apiserver with RBAC authorization on free loopback ports, writes an
admin kubeconfig, and removes everything on ``stop``. There is no controller manager, scheduler or kubelet:
objects are stored, validated, admitted and watched for real, but nothing reconciles them (no pods run, a
deleted namespace stays Terminating, no ServiceAccount appears by itself).

Each process runs on a leash: a small Python parent that ends it when the test process goes away however
it went (its stdin reaches EOF on a crash, a timeout or ``kill -9``), so a killed test run leaves no
etcd or kube-apiserver behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

import kubernetes.client
import yaml

__all__ = ["ApiServerUnavailable", "TempApiServer", "build_binaries", "free_port"]

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-apiserver.sh"

# The parent of one server process. It ends the process when its own stdin reaches EOF (the test process
# closed it, or died), then removes the given directory (etcd's removes the whole cluster folder); it exits
# when the process does.
# PR_SET_PDEATHSIG makes the kernel end the process even if the leash itself is killed outright.
_LEASH = r"""
import ctypes, shutil, signal, subprocess, sys, threading
log, remove, command = sys.argv[1], sys.argv[2], sys.argv[3:]

def die_with_parent():
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except Exception:
        pass

with open(log, "ab") as out:
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             preexec_fn=die_with_parent)

def on_eof():
    sys.stdin.buffer.read()
    child.terminate()
    try:
        child.wait(20)
    except subprocess.TimeoutExpired:
        child.kill()

threading.Thread(target=on_eof, daemon=True).start()
code = child.wait()
if remove:
    shutil.rmtree(remove, ignore_errors=True)
sys.exit(code)
"""


class ApiServerUnavailable(RuntimeError):
    """The binaries could not be built or found (no Go, no module proxy, a failed build)."""


def build_binaries(timeout: float = 60) -> Path:
    """The folder holding ``kube-apiserver`` and ``etcd``: ``$CAPTURE_EXPORT_KUBE_BIN`` (which ``./test.sh``
    sets, empty when its build failed), else the cache of ``scripts/build-apiserver.sh``. Never builds: a
    cold build takes far longer than a test may (``./test.sh`` and CI build first)."""
    given = os.environ.get("CAPTURE_EXPORT_KUBE_BIN")
    if given == "":
        raise ApiServerUnavailable(f"{BUILD_SCRIPT.name} failed in test.sh (its output is above the test run)")
    if given:
        folder = Path(given)
        if not all((folder / name).is_file() for name in ("kube-apiserver", "etcd")):
            raise ApiServerUnavailable(f"CAPTURE_EXPORT_KUBE_BIN={given} holds no kube-apiserver and etcd")
        return folder
    try:
        result = subprocess.run(["bash", str(BUILD_SCRIPT), "--no-build"], capture_output=True, text=True,
                                timeout=timeout, cwd=REPO_ROOT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ApiServerUnavailable(f"{BUILD_SCRIPT.name} did not answer: {exc}") from None
    if result.returncode != 0:
        raise ApiServerUnavailable(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else
                                   f"{BUILD_SCRIPT.name} --no-build failed ({result.returncode})")
    return Path(result.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=cwd, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def make_certificates(folder: Path) -> None:
    """A throwaway CA; a serving certificate for 127.0.0.1/localhost; an admin client certificate (group
    ``system:masters``, which RBAC lets do anything); an EC key pair that signs service-account tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "7",
             "-subj", "/CN=capture-export-test-ca", cwd=folder)
    leaf = ("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    for name, subject, usage in (
        ("server", "/CN=kube-apiserver", "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"),
        ("admin", "/O=system:masters/CN=capture-export-test-admin", "extendedKeyUsage=clientAuth\n"),
    ):
        (folder / f"{name}.ext").write_text(leaf + usage)
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "7", "-out", f"{name}.crt", "-extfile", f"{name}.ext", cwd=folder)
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sa.key", cwd=folder)
    _openssl("ec", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=folder)


class _Leashed:
    """One server process under its leash (see ``_LEASH``)."""

    def __init__(self, name: str, command: list[str], log: Path, remove: Path | None = None) -> None:
        self.name = name
        self.log = log
        self._leash = subprocess.Popen(
            [sys.executable, "-c", _LEASH, str(log), str(remove or ""), *command],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, whose teardown stops us in order
        )

    @property
    def running(self) -> bool:
        return self._leash.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        with contextlib.suppress(OSError):
            return f"{self.name} log tail:\n" + "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 30.0) -> None:
        with contextlib.suppress(OSError):
            self._leash.stdin.close()  # type: ignore[union-attr]
        try:
            self._leash.wait(timeout)
        except subprocess.TimeoutExpired:
            self._leash.kill()
            self._leash.wait(10)


class TempApiServer:
    """``with TempApiServer(bin_dir) as api: api.configuration()`` — etcd + kube-apiserver, always removed."""

    def __init__(self, bin_dir: Path, *, root: Path | None = None) -> None:
        self.bin_dir = bin_dir
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="capture-export-kube-"))
        self.certs = self.root / "pki"
        self.etcd_data = self.root / "etcd"
        self.kubeconfig = self.root / "admin.kubeconfig"
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.port = free_port()
        self.etcd: _Leashed | None = None
        self.apiserver: _Leashed | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    @property
    def ca_file(self) -> Path:
        return self.certs / "ca.crt"

    # -- processes -------------------------------------------------------------------------------------

    def start(self) -> TempApiServer:
        make_certificates(self.certs)
        self._start_etcd()
        self.start_apiserver()
        self._write_admin_kubeconfig()
        return self

    def _start_etcd(self) -> None:
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        self.etcd = _Leashed("etcd", [
            str(self.bin_dir / "etcd"), "--name", "test", "--data-dir", str(self.etcd_data),
            "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"test={peer}", "--initial-cluster-state", "new",
            "--unsafe-no-fsync",  # throwaway data: survive a process restart, not an OS crash
            "--log-level", "warn",
        ], self.root / "etcd.log", remove=self.root)  # the last to stop: everything goes with it
        self._wait_ready(self.etcd, f"{self.etcd_url}/health", timeout=60)

    def start_apiserver(self) -> None:
        """Start kube-apiserver (again, after :meth:`stop_apiserver`) on the same port, and wait for /readyz."""
        self.apiserver = _Leashed("kube-apiserver", [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1", f"--secure-port={self.port}", "--advertise-address=127.0.0.1",
            f"--cert-dir={self.root / 'generated-certs'}",
            f"--tls-cert-file={self.certs / 'server.crt'}", f"--tls-private-key-file={self.certs / 'server.key'}",
            f"--client-ca-file={self.ca_file}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={self.certs / 'sa.pub'}",
            f"--service-account-signing-key-file={self.certs / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--endpoint-reconciler-type=none",  # nothing here to reach at the advertised address anyway
            "--profiling=false",
            "--v=1",
        ], self.root / "kube-apiserver.log")
        self._wait_ready(self.apiserver, f"{self.url}/readyz", timeout=180)

    def stop_apiserver(self) -> None:
        if self.apiserver is not None:
            self.apiserver.stop()
            self.apiserver = None

    def restart_apiserver(self) -> None:
        self.stop_apiserver()
        self.start_apiserver()

    def stop(self) -> None:
        self.stop_apiserver()
        if self.etcd is not None:
            self.etcd.stop()
            self.etcd = None
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> TempApiServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(str(self.certs / "admin.crt"), str(self.certs / "admin.key"))
        return context

    def _wait_ready(self, process: _Leashed, url: str, timeout: float) -> None:
        context = self._ssl_context() if url.startswith("https") else None
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not process.running:
                raise RuntimeError(f"{process.name} exited at start\n{process.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=5, context=context) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as exc:  # 500 while post-start hooks finish
                last = f"{exc.code}"
            except (OSError, ssl.SSLError) as exc:
                last = exc.__class__.__name__
            time.sleep(0.2)
        raise RuntimeError(f"{process.name} not ready after {timeout:.0f}s (last: {last})\n{process.log_tail()}")

    # -- clients ---------------------------------------------------------------------------------------

    def configuration(self, *, token: str | None = None, host: str | None = None) -> kubernetes.client.Configuration:
        """A client configuration: the admin's client certificate, or ``token`` (a ServiceAccount's)."""
        config = kubernetes.client.Configuration(host=host or self.url)
        config.ssl_ca_cert = str(self.ca_file)
        config.verify_ssl = True
        if token is None:
            config.cert_file = str(self.certs / "admin.crt")
            config.key_file = str(self.certs / "admin.key")
        else:
            config.api_key = {"authorization": f"Bearer {token}"}
        return config

    def write_kubeconfig(self, path: Path, *, token: str | None = None, namespace: str = "default") -> Path:
        """A kubeconfig file for kubectl, Helm or ``$KUBECONFIG``: the admin, or ``token``."""
        user: dict[str, str] = ({"token": token} if token is not None else
                                {"client-certificate": str(self.certs / "admin.crt"),
                                 "client-key": str(self.certs / "admin.key")})
        document = {
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url,
                                                       "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": "test", "user": user}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test",
                                                       "namespace": namespace}}],
        }
        path.write_text(yaml.safe_dump(document))
        path.chmod(0o600)
        return path

    def _write_admin_kubeconfig(self) -> None:
        self.write_kubeconfig(self.kubeconfig)
