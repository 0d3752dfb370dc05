"""Scale check: N S3Exporters (default 200) in one operator process against the emulated API server.

    .venv/bin/python benchmarks/operator_scale.py [--exporters 200] [--records 1000] [--idle-seconds 30]

Needs the test extra (the emulator is the test suite's: kmock, psutil, pytest; `scripts/bootstrap.sh test`)
and SeaweedFS; both are checked before anything starts. Its temporary directory is always removed.

The operator runs exactly as in a pod: ``capture-export operator --all-namespaces`` in its own process,
logging in through a kubeconfig that points at the emulator (tests/support/emulator.py, served over
HTTP from a process of its own), exporting from a SQLite store to a real SeaweedFS. If the operator exits
at any point the benchmark stops at once with the end of its log (``--log`` keeps all of it). Reported:

* the operator's start (to its liveness endpoint) and the load average before and after;
* time from applying N exporters to all of them Ready with their backlog exported;
* idle CPU (% of one core) and RSS of the operator process once everything is caught up;
* time from a spec change (``kubectl apply`` of a new ``limit``) to ``status.observedGeneration``
  catching up: one resource at a time (p50/p95/max), then all N changed at once (time until the last).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_support import require

require("weed", "psutil", "kmock", "pytest", "attrs", "cel")

import kubernetes.client  # noqa: E402
import psutil  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.operator_harness import EmulatedCluster  # noqa: E402
from tests.support.records import make_record  # noqa: E402

from capture_export.api import GROUP, VERSION  # noqa: E402
from capture_export.local_s3 import LocalS3, free_ports  # noqa: E402
from capture_export.store import SQLiteStore  # noqa: E402

PLURAL = "s3exporters"
NAMESPACE = "default"


def serve_emulator(connection: Any) -> None:
    """Child process: the emulated API server, until the parent says stop."""
    cluster = EmulatedCluster().start()
    connection.send(cluster.url)
    connection.recv()
    cluster.stop()


class EmulatorProcess:
    """The emulator in a process of its own, so that the benchmark's polling does not slow it down."""

    def __init__(self) -> None:
        self.connection, child = multiprocessing.Pipe()
        self.process = multiprocessing.get_context("spawn").Process(target=serve_emulator, args=(child,))

    def start(self) -> EmulatorProcess:
        self.process.start()
        self.url = self.connection.recv()
        return self

    def configuration(self) -> kubernetes.client.Configuration:
        return kubernetes.client.Configuration(host=self.url)

    def stop(self) -> None:
        self.connection.send("stop")
        self.process.join(10)


def kubeconfig(url: str, path: Path) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: emulator, cluster: {{server: '{url}'}}}}]\n"
        "users: [{name: bench, user: {token: bench}}]\n"
        "contexts: [{name: emulator, context: {cluster: emulator, user: bench, namespace: default}}]\n"
        "current-context: emulator\n"
    )
    return path


# The operator's start, to its liveness endpoint, costs ~9 s of CPU (imports; in the test extra's venv the
# kubernetes package also loads kubernetes-validate, jsonschema and rfc3987-syntax's grammar, ~3 s): at a
# load of 6 on 2 CPUs that is ~45 s, and a minute was too short on a busier machine.
START_TIMEOUT = 300.0
# Ports are chosen free, then bound by the operator only once it has started: another process may take one
# meanwhile. The operator then exits ("address already in use"), and is started again on new ports.
START_ATTEMPTS = 3


class Operator:
    """``capture-export operator`` in a process of its own, logging to ``log``; every wait fails at once,
    with the end of its log, when it has exited."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.command, self.env, self.log = command, env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start it, on fresh ports, until its liveness endpoint answers; the seconds that took."""
        for attempt in range(1, START_ATTEMPTS + 1):
            self.liveness, readiness, metrics = free_ports(3)
            with self.log.open("ab") as log:
                self.process = subprocess.Popen(
                    [*self.command, "--liveness-port", str(self.liveness), "--readiness-port", str(readiness),
                     "--metrics-port", str(metrics)], env=self.env, stdout=log, stderr=subprocess.STDOUT)
            try:
                return wait(lambda: _healthy(self.liveness), START_TIMEOUT, "the operator's liveness endpoint",
                            interval=0.1, operator=self)
            except OperatorExited as exc:
                if "address already in use" not in exc.log_tail or attempt == START_ATTEMPTS:
                    raise SystemExit(str(exc)) from None
                print(f"operator_scale: a port was taken before the operator bound it; starting it again "
                      f"(attempt {attempt + 1} of {START_ATTEMPTS})", file=sys.stderr)
        raise AssertionError("unreachable")

    def check(self) -> None:
        """Raise OperatorExited when the process has exited."""
        assert self.process is not None
        code = self.process.poll()
        if code is not None:
            raise OperatorExited(code, self.log_tail())

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class OperatorExited(SystemExit):
    def __init__(self, code: int, log_tail: str) -> None:
        super().__init__(f"the operator exited (code {code}); its log ends:\n{log_tail}")
        self.log_tail = log_tail


def wait(predicate: Any, timeout: float, what: str, interval: float = 0.005, operator: Operator | None = None) -> float:
    """Seconds until ``predicate()`` holds; SystemExit after ``timeout`` seconds, or (OperatorExited) as
    soon as ``operator`` has exited."""
    started = time.monotonic()
    while not predicate():
        if operator is not None:
            operator.check()
        if time.monotonic() - started > timeout:
            tail = f"; the operator's log ends:\n{operator.log_tail()}" if operator is not None else ""
            raise SystemExit(f"timed out after {timeout}s waiting for {what}{tail}")
        time.sleep(interval)
    return time.monotonic() - started


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exporters", type=int, default=200)
    parser.add_argument("--records", type=int, default=1000, help="records in the store, exported by each")
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--single-changes", type=int, default=30, help="spec changes timed one at a time")
    parser.add_argument("--concurrency", type=int, default=8, help="the operator's --concurrency")
    parser.add_argument("--verbose", action="store_true", help="operator debug log (kept in --log)")
    parser.add_argument("--log", help="copy the operator's log here")
    args = parser.parse_args()
    n = args.exporters

    with (tempfile.TemporaryDirectory(prefix="operator-scale-") as tmp_dir,
          LocalS3(Path(tmp_dir) / "s3", die_with_parent=True) as s3):
        tmp = Path(tmp_dir)
        s3.create_bucket("exports")
        store = SQLiteStore(tmp / "store.sqlite")
        store.append(make_record(i) for i in range(args.records))
        store.close()
        cluster = EmulatorProcess().start()
        api = kubernetes.client.ApiClient(cluster.configuration())
        custom = kubernetes.client.CustomObjectsApi(api)
        core = kubernetes.client.CoreV1Api(api)
        core.create_namespaced_secret(NAMESPACE, {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3"},
            "stringData": {"access_key_id": s3.access_key_id, "access_secret": s3.secret_access_key}})

        env = dict(os.environ, KUBECONFIG=str(kubeconfig(cluster.url, tmp / "kubeconfig")))
        env.pop("KUBERNETES_SERVICE_HOST", None)
        command = [str(Path(sys.executable).parent / "capture-export"), "operator", "--all-namespaces",
                   "--store", str(tmp / "store.sqlite"), "--concurrency", str(args.concurrency)]
        command += ["--verbose"] if args.verbose else []
        operator = Operator(command, env, tmp / "operator.log")
        load_before = os.getloadavg()[0]
        try:
            start = operator.start()
            assert operator.process is not None
            process = psutil.Process(operator.process.pid)
            rss_started = process.memory_info().rss

            def listing() -> list[dict[str, Any]]:
                return custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)["items"]

            started = time.monotonic()
            for i in range(n):
                custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, {
                    "apiVersion": f"{GROUP}/{VERSION}", "kind": "S3Exporter", "metadata": {"name": f"e{i:03d}"},
                    "spec": {"bucket": "exports", "region": "us-east-1", "endpoint": s3.endpoint,
                             "secretRef": {"name": "s3"}, "prefix": f"e{i:03d}", "every": 3600, "limit": 1000}})
            applied = time.monotonic() - started

            def all_exported() -> bool:
                items = listing()
                return len(items) == n and all(
                    (item.get("status") or {}).get("cursor") == str(args.records) and _ready(item) for item in items)

            wait(all_exported, 600, f"{n} exporters Ready and caught up", interval=0.25, operator=operator)
            caught_up = time.monotonic() - started
            rss_busy = process.memory_info().rss

            # Idle: every exporter caught up, next cycle an hour away.
            time.sleep(2)  # let the last status writes and Events settle before measuring
            cpu_before, wall_before = cpu_seconds(process), time.monotonic()
            time.sleep(args.idle_seconds)
            idle_cpu = (cpu_seconds(process) - cpu_before) / (time.monotonic() - wall_before)
            rss_idle = process.memory_info().rss
            threads = process.num_threads()

            # One spec change at a time: apply, then poll that resource until observedGeneration follows.
            latencies = []
            for k in range(args.single_changes):
                name = f"e{(k * 37) % n:03d}"
                body = custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name,
                                                             {"spec": {"limit": 500 + k}})
                generation = body["metadata"]["generation"]
                latencies.append(wait(lambda name=name, generation=generation: _observed(custom, name) >= generation,
                                      60, f"{name} observedGeneration {generation}", operator=operator))

            # All at once.
            started = time.monotonic()
            targets = {}
            for i in range(n):
                body = custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, f"e{i:03d}",
                                                             {"spec": {"limit": 900}})
                targets[body["metadata"]["name"]] = body["metadata"]["generation"]
            patched = time.monotonic() - started

            def all_observed() -> bool:
                return all((item.get("status") or {}).get("observedGeneration", 0) >= targets[item["metadata"]["name"]]
                           for item in listing())

            wait(all_observed, 300, "all observedGeneration", interval=0.05, operator=operator)
            burst = time.monotonic() - started

            stop_started = time.monotonic()
            operator.process.send_signal(signal.SIGTERM)
            operator.process.wait(60)
            stopped = time.monotonic() - stop_started
            load_after = os.getloadavg()[0]
        finally:
            if operator.process is not None and operator.process.poll() is None:
                operator.process.kill()
            if args.log and operator.log.exists():
                Path(args.log).write_bytes(operator.log.read_bytes())
            api.close()
            cluster.stop()

    latencies.sort()
    mb = 1024 * 1024
    print(f"operator_scale: {n} S3Exporters, {args.records} records each, one operator process "
          f"(kopf {_kopf_version()}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    print(f"  load average (1 min): {load_before:.1f} before, {load_after:.1f} after")
    print(f"  operator start (to /healthz):       {start:6.2f} s")
    print(f"  apply {n} exporters:                {applied:6.2f} s")
    print(f"  all Ready and exported:             {caught_up:6.2f} s after the first apply")
    print(f"  RSS: started {rss_started / mb:.0f} MB, after catch-up {rss_busy / mb:.0f} MB, "
          f"idle {rss_idle / mb:.0f} MB ({threads} threads)")
    print(f"  idle CPU over {args.idle_seconds:.0f} s:              {idle_cpu * 100:6.2f} % of one core")
    print(f"  spec change -> observedGeneration, one at a time ({len(latencies)}): "
          f"p50 {statistics.median(latencies) * 1000:.0f} ms, "
          f"p95 {latencies[int(len(latencies) * 0.95) - 1] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms")
    print(f"  spec change of all {n} at once:      last observedGeneration {burst:6.2f} s after the first "
          f"patch (patching took {patched:.2f} s)")
    print(f"  graceful stop (SIGTERM):            {stopped:6.2f} s")


def _healthy(port: int) -> bool:
    import urllib.request

    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).status == 200
    except OSError:
        return False


def _ready(item: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (item.get("status") or {}).get("conditions", []))


def _observed(custom: kubernetes.client.CustomObjectsApi, name: str) -> int:
    body = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
    return int((body.get("status") or {}).get("observedGeneration") or 0)


def _kopf_version() -> str:
    from importlib.metadata import version

    return version("kopf")


if __name__ == "__main__":
    main()
