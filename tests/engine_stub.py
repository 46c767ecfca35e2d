"""A scripted stand-in for the Docker engine: an HTTP/1.1 server on a unix socket (or loopback
TCP) that answers ``GET /_ping`` with an ``Api-Version`` header and every other request as the
test scripted it, per method and path. Tests of ``sandbox.engine`` and of ``DockerRuntime``'s
retries talk to it through the real ``EngineClient``.

Use the ``engine_stub`` fixture (import it into a test module as ``engine_stub as engine_stub``)
or the ``serve`` context manager. Paths are matched without the ``/vX.Y`` prefix and the query,
still percent-quoted as sent: ``("GET", "/containers/a%2Fb/json")``.
"""

from __future__ import annotations

import json
import shutil
import socket
import socketserver
import tempfile
import threading
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from sandbox.engine import EngineClient

# Longer unix socket paths do not fit in sockaddr_un (108 bytes with the NUL).
_MAX_SOCKET_PATH = 100
_IO_TIMEOUT_S = 5.0
# How often the server loop looks for shutdown(): the wait each stub adds to its test.
_POLL_S = 0.02


@dataclass(frozen=True)
class Reply:
    """One scripted answer.

    ``body``: bytes are sent as they are (text/plain), anything else but None as JSON.
    ``chunks``: send these pieces with ``Transfer-Encoding: chunked`` (one write each) instead.
    ``hang_up``: read the request, then close the connection without a byte of answer.
    ``upgrade``: answer ``101 UPGRADED`` with ``early`` in the same write as the head, read
    what the client sends until it shuts its side, then send ``later`` and close.
    ``length``: the Content-Length to announce, when it should differ from the body's.
    ``raw``: send exactly these bytes as the whole answer, then close.
    """

    status: int = 200
    body: Any = None
    headers: tuple[tuple[str, str], ...] = ()
    chunks: tuple[bytes, ...] | None = None
    hang_up: bool = False
    upgrade: bool = False
    early: bytes = b""
    later: bytes = b""
    length: int | None = None
    raw: bytes | None = None

    def payload(self) -> tuple[bytes, str]:
        """The body's bytes and its content type."""
        if self.body is None:
            return b"", ""
        if isinstance(self.body, bytes):
            return self.body, "text/plain; charset=utf-8"
        return json.dumps(self.body).encode(), "application/json"


HANG_UP = Reply(hang_up=True)


def upgrade(early: bytes = b"", later: bytes = b"") -> Reply:
    """The attach upgrade: ``101 UPGRADED``, then the raw stream (see ``Reply``)."""
    return Reply(101, upgrade=True, early=early, later=later)


def error(status: int, message: str = "engine hiccup") -> Reply:
    """An error answer the way the engine words them: ``{"message": ...}``."""
    return Reply(status, {"message": message})


@dataclass
class Received:
    """One request as the stub read it."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    stream_in: bytes = b""  # what the client sent on an upgraded connection

    @property
    def version(self) -> str | None:
        """The ``X.Y`` of a ``/vX.Y/...`` target; None for an unversioned one (``/_ping``)."""
        first = urlsplit(self.target).path.split("/", 2)[1]
        return first[1:] if first.startswith("v") and first[1:2].isdigit() else None

    @property
    def path(self) -> str:
        raw = urlsplit(self.target).path
        return raw[len(f"/v{self.version}") :] if self.version else raw

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)

    @property
    def raw_query(self) -> str:
        return urlsplit(self.target).query


class EngineStub:
    """The scripted engine. ``route`` sets a path's standing answer; ``script`` queues one-shot
    answers served first, in order. Unrouted paths answer 404."""

    def __init__(self, address: str | tuple[str, int], api_version: str | None) -> None:
        self.address = address
        self.api_version = api_version
        self.received: list[Received] = []
        self._routes: dict[tuple[str, str], Reply] = {}
        self._queued: dict[tuple[str, str], deque[Reply]] = defaultdict(deque)
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        if isinstance(self.address, str):
            return f"unix://{self.address}"
        host, port = self.address
        return f"tcp://{host}:{port}"

    def client(self, timeout_s: float = _IO_TIMEOUT_S) -> EngineClient:
        return EngineClient(self.url, timeout_s=timeout_s)

    def route(self, method: str, path: str, reply: Reply) -> None:
        with self._lock:
            self._routes[(method, path)] = reply

    def script(self, method: str, path: str, *replies: Reply) -> None:
        with self._lock:
            self._queued[(method, path)].extend(replies)

    @property
    def calls(self) -> Counter[tuple[str, str]]:
        """Requests per (method, path), ``/_ping`` included."""
        with self._lock:
            return Counter((r.method, r.path) for r in self.received)

    def last(self, method: str, path: str) -> Received:
        with self._lock:
            return [r for r in self.received if (r.method, r.path) == (method, path)][-1]

    def _answer(self, request: Received) -> Reply:
        key = (request.method, request.path)
        with self._lock:
            self.received.append(request)
            if self._queued[key]:
                return self._queued[key].popleft()
            if key in self._routes:
                return self._routes[key]
        if key == ("GET", "/_ping"):
            return Reply(200, b"OK")
        return error(404, f"stub: no route for {request.method} {request.path}")

    # --- the connection side --------------------------------------------------------------

    def handle(self, sock: socket.socket) -> None:
        sock.settimeout(_IO_TIMEOUT_S)
        request = _read_request(sock)
        if request is None:
            return
        reply = self._answer(request)
        if reply.hang_up:
            return
        if reply.raw is not None:
            sock.sendall(reply.raw)
            return
        if reply.upgrade:
            self._upgraded(sock, request, reply)
            return
        body, content_type = reply.payload()
        headers = {"Api-Version": self.api_version} if self.api_version else {}
        if content_type:
            headers["Content-Type"] = content_type
        if reply.chunks is not None:
            headers["Content-Type"] = content_type or "application/json"
            headers["Transfer-Encoding"] = "chunked"
        else:
            headers["Content-Length"] = str(len(body) if reply.length is None else reply.length)
        headers.update(reply.headers)
        sock.sendall(_head(reply.status, headers) + (b"" if reply.chunks is not None else body))
        for chunk in reply.chunks or ():
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        if reply.chunks is not None:
            sock.sendall(b"0\r\n\r\n")

    def _upgraded(self, sock: socket.socket, request: Received, reply: Reply) -> None:
        headers = {
            "Content-Type": "application/vnd.docker.raw-stream",
            "Connection": "Upgrade",
            "Upgrade": "tcp",
            **dict(reply.headers),
        }
        sock.sendall(_head(reply.status, headers) + reply.early)
        received = b""
        while data := sock.recv(65536):
            received += data
        request.stream_in = received
        sock.sendall(reply.later)


def _head(status: int, headers: dict[str, str]) -> bytes:
    reason = "UPGRADED" if status == 101 else HTTPStatus(status).phrase
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _read_request(sock: socket.socket) -> Received | None:
    buffered = b""
    while b"\r\n\r\n" not in buffered:
        data = sock.recv(65536)
        if not data:
            return None
        buffered += data
    head, _, body = buffered.partition(b"\r\n\r\n")
    request_line, *lines = head.decode("latin-1").split("\r\n")
    method, target, _version = request_line.split(" ", 2)
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        data = sock.recv(65536)
        if not data:
            break
        body += data
    return Received(method, target, headers, body)


class _Handler(socketserver.BaseRequestHandler):
    server: _UnixServer | _TCPServer

    def handle(self) -> None:
        with suppress(OSError):  # the client went away: its side of the test reports that
            self.server.stub.handle(self.request)


class _UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    block_on_close = False
    stub: EngineStub


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False
    stub: EngineStub


@contextmanager
def serve(
    directory: Path, *, api_version: str | None = "1.41", tcp: bool = False
) -> Iterator[EngineStub]:
    """A stub engine on ``directory/engine.sock`` (or loopback TCP), stopped on exit."""
    scratch: str | None = None
    server: _UnixServer | _TCPServer
    if tcp:
        server = _TCPServer(("127.0.0.1", 0), _Handler)
        host, port = server.server_address[:2]
        address: str | tuple[str, int] = (str(host), int(port))
    else:
        path = directory / "engine.sock"
        if len(str(path)) > _MAX_SOCKET_PATH:
            scratch = tempfile.mkdtemp(prefix="engine-stub-")
            path = Path(scratch) / "engine.sock"
        server = _UnixServer(str(path), _Handler)
        address = str(path)
    server.stub = EngineStub(address, api_version)
    thread = threading.Thread(
        target=server.serve_forever, args=(_POLL_S,), name="engine-stub", daemon=True
    )
    thread.start()
    try:
        yield server.stub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=_IO_TIMEOUT_S)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def engine_stub(tmp_path: Path) -> Iterator[EngineStub]:
    """A stub engine speaking API 1.41 on a unix socket in ``tmp_path``."""
    with serve(tmp_path) as stub:
        yield stub
