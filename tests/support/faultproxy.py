"""A small TCP fault proxy for tests: put it between the worker and SeaweedFS or PostgreSQL.

``FaultProxy(target_port)`` listens on a free loopback port and forwards every connection to the
target. Faults are switched on and off while traffic flows:

* ``outage()`` / ``restore()``: the listening socket closes (new connections are refused) and every open
  connection is reset, as when a server or the network goes away; ``restore`` listens again on the same
  port.
* ``reset_all()``: reset every open connection now.
* ``reset_uploads(count, after_bytes)``: the next ``count`` connections that send more than
  ``after_bytes`` towards the server in one request (HTTP) or in total (raw TCP) are reset right there,
  halfway through the upload.
* ``reset_downloads(count, after_bytes)``: the same for bytes coming back from the server (a PostgreSQL
  result set cut off mid-stream).
* ``delay``: seconds added before each chunk the server sends back (slow responses); ``upload_delay``
  the same towards the server.
* ``stall_responses(count, only=...)``: the next ``count`` HTTP requests are forwarded but their responses
  are held back until the client gives up (a server slower than the client's read timeout). ``only``, a
  test on the request line (``"PUT /bucket/key HTTP/1.1"``), picks the requests stalled: the others pass
  (an upload hangs while the lease's requests still answer).
* ``throttle(count)`` (HTTP mode): the next ``count`` requests are answered ``503 SlowDown`` by the proxy
  itself, with S3's XML error body; ``throttled_at`` records when each arrived, so a test can check
  that the client backed off.

HTTP mode parses requests (``Content-Length`` bodies, ``Expect: 100-continue``), enough for boto3's S3
traffic; responses are passed through untouched. Every loop is bounded by socket closes: ``stop``
ends all threads.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

__all__ = ["FaultProxy"]

CHUNK = 16 * 1024
SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>faultproxy</RequestId></Error>"
)


def _reset(sock: socket.socket) -> None:
    """Close with RST rather than FIN. ``shutdown(SHUT_RD)`` first wakes a thread blocked reading this
    socket (sending nothing to the peer): closing alone would leave the kernel socket, and the peer,
    waiting until that read returned."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()


@dataclass(eq=False)
class _Pair:
    client: socket.socket
    server: socket.socket
    closed: bool = False
    stalled: bool = False  # hold back whatever the server answers from now on
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        _reset(self.client)
        _reset(self.server)

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


@dataclass
class ProxyStats:
    connections: int = 0
    refused_while_down: int = 0
    resets: int = 0
    throttled: int = 0
    stalled: int = 0
    requests: int = 0


class FaultProxy:
    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1", http: bool = False) -> None:
        self.target = (target_host, target_port)
        self.http = http
        self.port = 0
        self.delay = 0.0
        self.upload_delay = 0.0
        self.stats = ProxyStats()
        self.throttled_at: list[float] = []
        self._lock = threading.Lock()
        self._throttle = 0
        self._stall = 0
        self._stall_only: Callable[[str], bool] | None = None
        self._upload_resets: list[int] = []  # byte thresholds, one per reset still to do
        self._download_resets: list[int] = []
        self._pairs: set[_Pair] = set()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopped = threading.Event()

    # -- lifecycle -----------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        self._listener = sock
        self._accept_thread = threading.Thread(target=self._accept_loop, args=(sock,), daemon=True,
                                               name=f"faultproxy-{self.port}")
        self._accept_thread.start()

    def start(self) -> FaultProxy:
        self._listen()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._close_listener()
        self.reset_all(count=False)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- faults --------------------------------------------------------------------------------------

    def outage(self) -> None:
        """Refuse new connections and reset the open ones until ``restore``."""
        self._close_listener()
        self.reset_all()

    def restore(self) -> None:
        if self._listener is None and not self._stopped.is_set():
            self._listen()

    @property
    def down(self) -> bool:
        return self._listener is None

    def reset_all(self, *, count: bool = True) -> None:
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            pair.reset()
        if count:
            self.stats.resets += len(pairs)

    def reset_uploads(self, count: int, after_bytes: int) -> None:
        with self._lock:
            self._upload_resets.extend([after_bytes] * count)

    def reset_downloads(self, count: int, after_bytes: int) -> None:
        with self._lock:
            self._download_resets.extend([after_bytes] * count)

    def throttle(self, count: int) -> None:
        with self._lock:
            self._throttle += count

    def stall_responses(self, count: int, *, only: Callable[[str], bool] | None = None) -> None:
        with self._lock:
            self._stall += count
            self._stall_only = only

    def clear(self) -> None:
        """Cancel every pending fault (resets, throttling, stalls, delays)."""
        with self._lock:
            self._throttle = self._stall = 0
            self._stall_only = None
            self._upload_resets.clear()
            self._download_resets.clear()
        self.delay = self.upload_delay = 0.0

    # -- plumbing ------------------------------------------------------------------------------------

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                listener.close()
        thread = self._accept_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # listener closed: outage or stop
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                self.stats.refused_while_down += 1
                continue
            server.settimeout(None)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(client, server)
            with self._lock:
                self._pairs.add(pair)
            self.stats.connections += 1
            up = self._pump_http_requests if self.http else self._pump_raw_up
            threading.Thread(target=self._guard, args=(pair, up), daemon=True).start()
            threading.Thread(target=self._guard, args=(pair, self._pump_down), daemon=True).start()

    def _guard(self, pair: _Pair, pump) -> None:
        try:
            pump(pair)
        except OSError:
            pass
        finally:
            pair.close()
            with self._lock:
                self._pairs.discard(pair)

    def _take_reset(self, thresholds: list[int], larger_than: int | None = None) -> int | None:
        """The next pending reset threshold, if any (for a request: only if its body is longer)."""
        with self._lock:
            if not thresholds or (larger_than is not None and larger_than <= thresholds[0]):
                return None
            return thresholds.pop(0)

    def _pump_down(self, pair: _Pair) -> None:
        threshold: int | None = None
        sent = 0  # bytes since the pending reset was armed
        while True:
            data = pair.server.recv(CHUNK)
            if not data:
                with contextlib.suppress(OSError):
                    pair.client.shutdown(socket.SHUT_WR)
                return
            if pair.stalled:
                continue  # swallowed: the client waits in vain
            if self.delay:
                time.sleep(self.delay)
            if threshold is None:
                threshold = self._take_reset(self._download_resets)
                sent = 0
            if threshold is not None and sent + len(data) > threshold:
                pair.client.sendall(data[: max(0, threshold - sent)])
                self.stats.resets += 1
                pair.reset()
                return
            pair.client.sendall(data)
            sent += len(data)

    def _pump_raw_up(self, pair: _Pair) -> None:
        threshold: int | None = None
        sent = 0  # bytes since the pending reset was armed
        while True:
            data = pair.client.recv(CHUNK)
            if not data:
                with contextlib.suppress(OSError):
                    pair.server.shutdown(socket.SHUT_WR)
                return
            if self.upload_delay:
                time.sleep(self.upload_delay)
            if threshold is None:
                threshold = self._take_reset(self._upload_resets)
                sent = 0
            if threshold is not None and sent + len(data) > threshold:
                pair.server.sendall(data[: max(0, threshold - sent)])
                self.stats.resets += 1
                pair.reset()
                return
            pair.server.sendall(data)
            sent += len(data)

    # HTTP: one request at a time from the client, each either forwarded or answered here.

    def _pump_http_requests(self, pair: _Pair) -> None:
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                data = pair.client.recv(CHUNK)
                if not data:
                    with contextlib.suppress(OSError):
                        pair.server.shutdown(socket.SHUT_WR)
                    return
                buffer += data
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            head += b"\r\n\r\n"
            headers = {}
            for line in head.split(b"\r\n")[1:]:
                name, sep, value = line.partition(b":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                # Not needed for boto3's S3 calls; pass the rest through untouched.
                pair.server.sendall(head + buffer)
                self._pump_raw_up(pair)
                return
            length = int(headers.get(b"content-length", b"0") or 0)
            expects_continue = headers.get(b"expect", b"").lower() == b"100-continue"
            self.stats.requests += 1
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            with self._lock:
                throttled = self._throttle > 0
                if throttled:
                    self._throttle -= 1
                stall = (not throttled and self._stall > 0
                         and (self._stall_only is None or self._stall_only(request_line)))
                if stall:
                    self._stall -= 1
            if throttled:
                self._answer_slowdown(pair, buffer, length, expects_continue)
                return
            if stall:
                pair.stalled = True
            pair.server.sendall(head)
            threshold = self._take_reset(self._upload_resets, larger_than=length)
            remaining = length
            sent = 0
            while remaining > 0:
                if buffer:
                    data, buffer = buffer[:remaining], buffer[remaining:]
                else:
                    data = pair.client.recv(min(CHUNK, remaining))
                    if not data:
                        return
                if self.upload_delay:
                    time.sleep(self.upload_delay)
                if threshold is not None and sent + len(data) > threshold:
                    pair.server.sendall(data[: max(0, threshold - sent)])
                    self.stats.resets += 1
                    pair.reset()
                    return
                pair.server.sendall(data)
                sent += len(data)
                remaining -= len(data)
            if stall:
                # Keep the response from ever arriving: the client times out and gives up on this
                # connection (the server may well have done the work: a retry must be harmless).
                self.stats.stalled += 1
                pair.client.settimeout(120)
                with contextlib.suppress(OSError):
                    while pair.client.recv(CHUNK):  # until the client gives up and closes
                        pass
                pair.reset()
                return

    def _answer_slowdown(self, pair: _Pair, buffer: bytes, length: int, expects_continue: bool) -> None:
        self.stats.throttled += 1
        self.throttled_at.append(time.monotonic())
        if not expects_continue:
            # Read the body so that closing does not turn into a reset before the client reads the 503.
            remaining = length - len(buffer)
            while remaining > 0:
                data = pair.client.recv(min(CHUNK, remaining))
                if not data:
                    break
                remaining -= len(data)
        response = (
            b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
            + f"Content-Length: {len(SLOWDOWN_BODY)}\r\n".encode()
            + b"Connection: close\r\n\r\n"
            + SLOWDOWN_BODY
        )
        pair.client.sendall(response)
        with contextlib.suppress(OSError):
            pair.client.shutdown(socket.SHUT_WR)
        # Drain whatever the client still sends (a body after 100-continue) until it closes.
        pair.client.settimeout(5)
        with contextlib.suppress(OSError):
            while pair.client.recv(CHUNK):
                pass
