"""A small client for the Docker Engine API: HTTP/1.1 over the engine's unix socket (or TCP,
with TLS when ``DOCKER_TLS_VERIFY`` asks for it), JSON in and out, and the hijacked ``attach``
connection. ``docker_runtime`` is its only user.

Why not the docker SDK here: ``sandbox run`` is one process per call, and importing the SDK
(with requests and urllib3) costs each call more than the engine's own create (docs/
performance.md). The run path needs eight endpoints; the SDK stays the client of everything
else (images, scan, the bench's floor). ``spec.ContainerSpec.engine_body`` is tested equal to
what the SDK sends, so both speak the same API.

Every request opens its own connection (``Connection: close``): a unix-socket connect costs
microseconds, nothing is shared between threads, and a response ends at EOF.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

DEFAULT_HOST = "unix:///var/run/docker.sock"
# The oldest API with everything a run uses (CgroupnsMode); newer engines are spoken to at the
# newest version both sides know, capped at the newest this client has been checked against.
MIN_API = (1, 41)
MAX_API = (1, 47)
_HEADER_LIMIT = 64 * 1024


class EngineError(Exception):
    """The engine answered with an error status."""

    def __init__(self, status: int, message: str, *, method: str, path: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message
        self.method = method
        self.path = path


class EngineUnreachable(Exception):
    """No engine answered at the configured address, or the connection broke."""


def _version(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor)


class EngineClient:
    """Requests to one engine address: ``DOCKER_HOST`` (unix:// or tcp://) or the default
    socket. ``timeout_s`` bounds every call except where a caller passes its own."""

    def __init__(self, base_url: str | None = None, *, timeout_s: float = 60.0) -> None:
        self.base_url = base_url or os.environ.get("DOCKER_HOST") or DEFAULT_HOST
        self.timeout_s = timeout_s
        self._api_version: str | None = None
        url = urlsplit(self.base_url)
        self._tls = url.scheme == "https" or bool(os.environ.get("DOCKER_TLS_VERIFY"))
        if url.scheme in ("unix", "http+unix"):
            self._address: Any = url.path
        elif url.scheme in ("tcp", "http", "https"):
            # Docker's conventional ports: 2376 with TLS, 2375 without.
            default_port = 2376 if self._tls else 2375
            self._address = (url.hostname or "localhost", url.port or default_port)
        else:
            msg = (
                f"DOCKER_HOST {self.base_url!r}: only unix:// and tcp:// engines are supported "
                "(for ssh://, forward the socket: `ssh -NL /tmp/docker.sock:/var/run/docker.sock "
                "HOST` and set DOCKER_HOST=unix:///tmp/docker.sock)"
            )
            raise EngineUnreachable(msg)

    # --- connections ----------------------------------------------------------------------

    def _connect(self, timeout_s: float | None) -> socket.socket:
        sock: socket.socket | None = None
        try:
            if isinstance(self._address, str):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout_s)
                sock.connect(self._address)
                return sock
            sock = socket.create_connection(self._address, timeout=timeout_s)
            return self._wrap_tls(sock) if self._tls else sock
        except OSError as exc:  # ssl.SSLError is an OSError too
            if sock is not None:
                sock.close()
            msg = f"cannot connect to the Docker engine at {self.base_url}: {exc}"
            raise EngineUnreachable(msg) from exc

    def _wrap_tls(self, sock: socket.socket) -> socket.socket:
        import ssl  # only for TLS engines

        certs = Path(os.environ.get("DOCKER_CERT_PATH") or Path("~/.docker").expanduser())
        context = ssl.create_default_context(cafile=certs / "ca.pem")
        context.load_cert_chain(certs / "cert.pem", certs / "key.pem")
        return context.wrap_socket(sock, server_hostname=self._address[0])

    @property
    def api_version(self) -> str:
        """The API version both sides speak, read once from the engine's ``/_ping``."""
        if self._api_version is None:
            status, headers, _ = self._exchange("GET", "/_ping", None, None, self.timeout_s)
            if status != 200:
                msg = f"the engine at {self.base_url} answered /_ping with {status}"
                raise EngineUnreachable(msg)
            server = _version(headers.get("api-version", "1.41"))
            if server < MIN_API:
                msg = (
                    f"the engine speaks API {server[0]}.{server[1]}; sandbox needs "
                    f"{MIN_API[0]}.{MIN_API[1]} or newer (Docker 20.10+)"
                )
                raise EngineUnreachable(msg)
            chosen = min(server, MAX_API)
            self._api_version = f"{chosen[0]}.{chosen[1]}"
        return self._api_version

    def _target(self, path: str, params: dict[str, Any] | None) -> str:
        query = f"?{urlencode(params)}" if params else ""
        return f"/v{self.api_version}{path}{query}"

    # --- requests -------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        timeout_s: float | None = None,
    ) -> Any:
        """One call; the decoded JSON answer (None when empty). EngineError on 4xx/5xx."""
        target = self._target(path, params)
        status, headers, data = self._exchange(
            method, target, body, headers=None, timeout_s=timeout_s or self.timeout_s
        )
        if status >= 400:
            raise EngineError(status, _error_message(data), method=method, path=path)
        if not data:
            return None
        if "json" in headers.get("content-type", ""):
            try:
                return json.loads(data)
            except ValueError as exc:
                msg = f"the Docker engine's answer to {method} {path} is not JSON: {exc}"
                raise EngineUnreachable(msg) from exc
        return data.decode("utf-8", "replace")

    def _exchange(
        self,
        method: str,
        target: str,
        body: Any,
        headers: dict[str, str] | None,
        timeout_s: float | None,
    ) -> tuple[int, dict[str, str], bytes]:
        sock = self._connect(timeout_s)
        try:
            sock.sendall(_request_bytes(method, target, body, headers))
            chunks = []
            while data := sock.recv(256 * 1024):
                chunks.append(data)
        except OSError as exc:
            msg = f"lost the connection to the Docker engine during {method} {target}: {exc}"
            raise EngineUnreachable(msg) from exc
        finally:
            sock.close()
        raw = b"".join(chunks)
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            msg = f"the Docker engine closed the connection during {method} {target}"
            raise EngineUnreachable(msg)
        status, fields = _parse_head(head)
        return status, fields, _body(fields, rest, f"{method} {target}")

    def hijack(self, path: str, params: dict[str, Any]) -> tuple[socket.socket, bytes]:
        """``POST path`` upgraded to a raw stream (attach): the socket and any bytes of the
        stream that arrived with the response head."""
        target = self._target(path, params)
        sock = self._connect(self.timeout_s)
        try:
            sock.sendall(
                _request_bytes(
                    "POST", target, None, {"Connection": "Upgrade", "Upgrade": "tcp"}, close=False
                )
            )
            buffered = b""
            while b"\r\n\r\n" not in buffered:
                data = sock.recv(4096)
                if not data or len(buffered) > _HEADER_LIMIT:
                    msg = f"the Docker engine closed the connection during POST {target}"
                    raise EngineUnreachable(msg)
                buffered += data
        except OSError as exc:
            sock.close()
            msg = f"lost the connection to the Docker engine during POST {target}: {exc}"
            raise EngineUnreachable(msg) from exc
        except EngineUnreachable:
            sock.close()
            raise
        head, _, early = buffered.partition(b"\r\n\r\n")
        status, fields = _parse_head(head)
        if status >= 400:
            # The error's body may trail its head: read the answer to its end for the message.
            try:
                while data := sock.recv(64 * 1024):
                    early += data
            except OSError:
                pass  # the message is a courtesy; the status is the answer
            finally:
                sock.close()
            try:
                body = _body(fields, early, f"POST {target}")
            except EngineUnreachable:
                body = early
            raise EngineError(status, _error_message(body), method="POST", path=path)
        return sock, early


def container_path(container_id: str, action: str = "") -> str:
    return f"/containers/{quote(container_id, safe='')}{action}"


def image_path(name: str, action: str = "") -> str:
    # A repository name keeps its slashes and tag colon, as the engine's router expects.
    return f"/images/{quote(name, safe='/:')}{action}"


def _request_bytes(
    method: str,
    target: str,
    body: Any,
    headers: dict[str, str] | None,
    *,
    close: bool = True,
) -> bytes:
    payload = b"" if body is None else json.dumps(body).encode("utf-8")
    lines = [f"{method} {target} HTTP/1.1", "Host: docker", "User-Agent: sandbox"]
    if close:
        lines.append("Connection: close")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append("Content-Type: application/json")
    lines.append(f"Content-Length: {len(payload)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        msg = f"the Docker engine sent a malformed answer: {lines[0][:80]!r}"
        raise EngineUnreachable(msg) from None
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return status, fields


def _body(fields: dict[str, str], rest: bytes, what: str) -> bytes:
    """The response body, de-chunked; EngineUnreachable if the connection cut it short."""
    if fields.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(rest)
        if body is None:
            msg = f"the Docker engine's answer to {what} was cut short"
            raise EngineUnreachable(msg)
        return body
    length = fields.get("content-length")
    if length is not None and length.isdigit() and len(rest) < int(length):
        msg = f"the Docker engine's answer to {what} was cut short ({len(rest)} of {length} bytes)"
        raise EngineUnreachable(msg)
    return rest


def _dechunk(data: bytes) -> bytes | None:
    """A chunked body's bytes, or None if it does not end with its last (empty) chunk."""
    out = bytearray()
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            return None
        try:
            size = int(data[pos:end].split(b";", 1)[0], 16)
        except ValueError:
            return None
        if size == 0:
            return bytes(out)
        if end + 2 + size > len(data):
            return None
        out += data[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2


def _error_message(data: bytes) -> str:
    try:
        message = json.loads(data).get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message) if message else data.decode("utf-8", "replace").strip()[:500]
