"""What a PUT of S3ObjectStore puts on the wire, seen by a small HTTP server on loopback: the body whole with
the headers (no ``Expect: 100-continue`` and no wait for the server's interim answer: CPU on every commit),
every header the export relies on, and a refusal made from the headers alone (the server answers and
closes without reading the body) still classed by the server's reason, not as a broken connection."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import botocore.handlers
import pytest

from capture_export.objectstore import (
    PRECONDITION_FAILED,
    Credentials,
    ObjectStoreError,
    S3Access,
    S3Location,
    S3ObjectStore,
    ServerSideEncryption,
)

PUT_OBJECT_BODY_EVENT = "before-parameter-build.s3.PutObject"
ERROR_XML = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
             "<RequestId>test</RequestId></Error>")


@dataclass
class Request:
    line: str
    headers: dict[str, str]
    body: bytes


@dataclass
class RecordingServer:
    """One connection at a time, ``Connection: close`` on every answer. ``refuse``: (status line, S3 error
    code) answered as soon as the headers are in, then the socket is closed with the body unread (the
    kernel resets the connection); else the body is read (after ``100 Continue`` when asked) and the PUT
    answered 200 with an ETag."""

    refuse: tuple[str, str] | None = None
    requests: list[Request] = field(default_factory=list)
    listener: socket.socket = field(default_factory=socket.socket)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:  # the listener was closed: the test is over
                return
            with connection:
                self._answer(connection)

    def _answer(self, connection: socket.socket) -> None:
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = connection.recv(65536)
            if not chunk:
                return
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {name.strip().lower(): value.strip()
                   for name, _, value in (header.partition(":") for header in header_lines)}
        if self.refuse is not None:
            self.requests.append(Request(line, headers, b""))
            status, code = self.refuse
            xml = ERROR_XML.format(code=code, message="refused from the headers").encode()
            connection.sendall(f"HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {len(xml)}"
                               "\r\nConnection: close\r\n\r\n".encode() + xml)
            return
        if headers.get("expect", "").lower() == "100-continue":
            connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = connection.recv(1 << 20)
            if not chunk:
                return
            body += chunk
        self.requests.append(Request(line, headers, body))
        connection.sendall(b'HTTP/1.1 200 OK\r\nETag: "etag-1"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n')


@contextlib.contextmanager
def recording_server(refuse: tuple[str, str] | None = None) -> Iterator[RecordingServer]:
    server = RecordingServer(refuse)
    server.listener.bind(("127.0.0.1", 0))
    server.listener.listen(8)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        with contextlib.suppress(OSError):
            server.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() that close() alone would not
        server.listener.close()
        thread.join(timeout=10)


def store_at(server: RecordingServer, encryption: ServerSideEncryption | None = None) -> S3ObjectStore:
    return S3ObjectStore(S3Location("bucket-a", "us-east-1", server.endpoint),
                         S3Access(Credentials("AKIDEXAMPLE", "secret-example"), encryption=encryption),
                         read_timeout=10)


def test_the_botocore_handler_that_wraps_a_put_body_is_still_there() -> None:
    # S3ObjectStore unregisters it for PutObject by name: a botocore that renames or moves it would
    # silently bring back the wrapped body, `Expect: 100-continue` and its CPU.
    handler = getattr(botocore.handlers, "convert_body_to_file_like_object", None)
    assert handler is not None, "botocore.handlers.convert_body_to_file_like_object is gone: see objectstore/s3.py"
    assert any(event == PUT_OBJECT_BODY_EVENT and registered is handler
               for event, registered, *_ in botocore.handlers.BUILTIN_HANDLERS)


@pytest.mark.parametrize("size", [1_000, 700_000])
def test_a_put_sends_its_body_with_the_headers_without_waiting_for_100_continue(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    with recording_server() as server:
        store = store_at(server)
        store.put("exports/batch-1.cbor.zst", data, content_type="application/cbor")
        etag = store.put_conditional("checkpoints/one.json", data, if_match='"etag-0"')
    assert etag == '"etag-1"'
    assert [request.line for request in server.requests] == [
        "PUT /bucket-a/exports/batch-1.cbor.zst HTTP/1.1", "PUT /bucket-a/checkpoints/one.json HTTP/1.1"]
    for request in server.requests:
        assert "expect" not in request.headers
        assert request.body == data
        assert request.headers["content-length"] == str(size)


def test_a_put_keeps_every_header_the_export_relies_on() -> None:
    data = b'{"cursor": 1}'
    encryption = ServerSideEncryption("aws:kms", "arn:aws:kms:us-east-1:111122223333:key/example")
    with recording_server() as server:
        store = store_at(server, encryption)
        store.put("exports/a", data, content_type="application/cbor", metadata={"records": "3"})
        store.put_conditional("checkpoints/b", data, if_none_match=True, content_type="application/json")
        store.put_conditional("checkpoints/b", data, if_match='"etag-1"', content_type="application/json")
    plain, created, replaced = (request.headers for request in server.requests)
    for headers in (plain, created, replaced):
        assert headers["x-amz-server-side-encryption"] == "aws:kms"
        assert headers["x-amz-server-side-encryption-aws-kms-key-id"] == encryption.kms_key_id
        assert headers["x-amz-content-sha256"] == hashlib.sha256(data).hexdigest()  # the payload is signed
        assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert plain["content-type"] == "application/cbor"
    assert plain["x-amz-meta-records"] == "3"
    assert created["if-none-match"] == "*" and "if-match" not in created
    assert replaced["if-match"] == '"etag-1"' and "if-none-match" not in replaced
    assert replaced["content-type"] == "application/json"


@pytest.mark.parametrize(("status", "code", "reason"), [
    ("403 Forbidden", "AccessDenied", "AccessDenied"),
    ("412 Precondition Failed", "PreconditionFailed", PRECONDITION_FAILED),
    ("503 Slow Down", "SlowDown", "Throttled"),
])
def test_a_refusal_from_the_headers_alone_keeps_its_reason(status: str, code: str, reason: str) -> None:
    # 8 MB: more than loopback's socket buffers hold, so the upload is still being sent when the server
    # closes on it; the client must read the answer that came first, not report a broken connection.
    data = b"\x00" * (8 << 20)
    with recording_server(refuse=(status, code)) as server:
        store = store_at(server)
        for _ in range(3):
            with pytest.raises(ObjectStoreError) as refused:
                store.put_conditional("checkpoints/c", data, if_match='"etag-0"')
            assert refused.value.reason == reason, refused.value
