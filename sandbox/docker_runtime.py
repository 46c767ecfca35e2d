"""The Docker engine behind ``ContainerRuntime``, spoken to through ``engine.EngineClient``; the
one place engine errors become ours.

Engine facts this module relies on (../shared/notes/engine.md): attach with ``logs=0`` and
before start; the log driver is ``none`` so output never piles up in the daemon; a missing image
is an error, never a pull, and a non-zero exit is data, not an exception (the SDK's
``containers.run()`` does the opposite of both).
"""

from __future__ import annotations

import functools
import json
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from .engine import EngineClient, EngineError, EngineUnreachable, container_path, image_path
from .errors import InfrastructureError, SandboxError
from .log import logger
from .retry import transient_retry
from .runtime import (
    Attachment,
    EngineInfo,
    ExitState,
    ManagedContainer,
    ResourceUsage,
    StreamName,
)
from .spec import LABEL_MANAGED, LABEL_RUN_ID, LABEL_STDOUT_PIPE, ContainerSpec

T = TypeVar("T")
ENGINE_FIX = (
    "start the engine: `make setup` (runs scripts/engine.sh) or `sudo systemctl start docker`"
)
_STREAMS: dict[int, StreamName] = {1: "stdout", 2: "stderr"}
_RECV_BYTES = 256 * 1024
_HEADER = struct.Struct(">BxxxL")
# A read at least this large means a bulk stream: from then on the socket returns a read only
# once BATCH bytes are there or BATCH_WAIT has passed (SO_RCVLOWAT with SO_RCVTIMEO). The
# engine writes a stream in pieces of ≤32 KiB, each a wake-up of this process and a trip
# through the frame path; batched, a stream costs ≈15 % less CPU here with a quarter of the
# send buffer, 4–10 % less again with half, and fewer writes (and wake-ups) for whoever reads
# the frames. A frame waits at most BATCH_WAIT; a stream that stays quiet for BATCH_WAIT goes
# back to reads that return on any byte.
BULK_READ_BYTES = 16 * 1024
BATCH_WAIT_US = 2000
_BATCH_MAX_BYTES = 128 * 1024
ENGINE_WRITE_BYTES = 32 * 1024  # the most the engine forwards of a stream in one write
_WMEM_DEFAULT = Path("/proc/sys/net/core/wmem_default")
# As much as a socket read: a read's lines, frames and joined batch are alive at once, so the
# read size bounds the relay's memory (a 1 MiB read of small frames grew serve's peak RSS by
# ≈20 MiB where 256 KiB reads grow it by ≈5).
_PIPE_READ_BYTES = _RECV_BYTES
# Once the attach stream has ended the container is ending: its processes are being killed, and
# a pipe whose writers are all gone reports it at once. A pipe no writer ever opened (a launcher
# that failed before opening it) never does; it gets this long.
PIPE_DRAIN_S = 1.0
_PIPE_POLL_MS = 100  # how often a drain looks at ``close()``
PIPE_RUNTIME = "runc"


# Where Docker's cgroupfs driver puts a container's counters (cgroup v1, then v2).
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_PIDS_EVENTS = (
    "pids/docker/{id}/pids.events",
    "docker/{id}/pids.events",
    "system.slice/docker-{id}.scope/pids.events",
)
_MEMORY_PEAK = (
    "memory/docker/{id}/memory.max_usage_in_bytes",
    "docker/{id}/memory.peak",
    "system.slice/docker-{id}.scope/memory.peak",
)


def _parse_counter(text: str, prefix: str) -> int | None:
    for line in text.splitlines():
        if line.startswith(prefix):
            try:
                return int(line[len(prefix) :].strip())
            except ValueError:
                return None
    return None


class CgroupCounters:
    """Counter files of containers, opened once and read with ``pread``.

    A run samples its container's counters every few milliseconds while output arrives.
    Opening a cgroup file costs ≈50 µs on an idle host and several times that on two busy
    cores; re-reading an open one costs ≈1 µs. Files stay open until ``forget`` (the
    container's removal); at most ``MAX_CONTAINERS`` containers' files are kept, the oldest
    closed first. Reads and closes share a lock, so a read never meets a reused fd number."""

    MAX_CONTAINERS = 64
    _GONE = -1  # the file was open and its cgroup has since gone: it never comes back

    def __init__(self, root: Path = _CGROUP_ROOT) -> None:
        self._root = root
        self._lock = threading.Lock()
        self._fds: dict[str, dict[str, int]] = {}

    def read(self, container_id: str, candidates: tuple[str, ...], prefix: str = "") -> int | None:
        with self._lock:
            fds = self._fds.get(container_id)
            if fds is None:
                fds = self._fds[container_id] = {}
                self._evict()
            fd = fds.get(candidates[0])
            if fd is None:
                fd = self._open(container_id, candidates)
                if fd is None:
                    return None  # not there (yet): looked for again next time
                fds[candidates[0]] = fd
            if fd == self._GONE:
                return None
            try:
                text = os.pread(fd, 4096, 0).decode("ascii", "replace")
            except OSError:
                os.close(fd)
                fds[candidates[0]] = self._GONE
                return None
        return _parse_counter(text, prefix)

    def forget(self, container_id: str) -> None:
        with self._lock:
            self._close(self._fds.pop(container_id, {}))

    def _open(self, container_id: str, candidates: tuple[str, ...]) -> int | None:
        for pattern in candidates:
            try:
                return os.open(self._root / pattern.format(id=container_id), os.O_RDONLY)
            except OSError:
                continue
        return None

    def _evict(self) -> None:
        while len(self._fds) > self.MAX_CONTAINERS:
            self._close(self._fds.pop(next(iter(self._fds))))

    @classmethod
    def _close(cls, fds: dict[str, int]) -> None:
        for fd in fds.values():
            if fd != cls._GONE:
                os.close(fd)


def _is_transient(exc: BaseException) -> bool:
    """Connection hiccups and 5xx answers; never a 4xx (the request itself is wrong)."""
    if isinstance(exc, EngineUnreachable):
        return True
    return isinstance(exc, EngineError) and exc.status >= 500


@contextmanager
def translated(action: str) -> Iterator[None]:
    """Turn engine errors raised by ``action`` into InfrastructureError."""
    try:
        yield
    except SandboxError:
        raise
    except EngineUnreachable as exc:
        raise unreachable(action, exc) from exc
    except EngineError as exc:
        raise refused(action, exc.message, exc.status) from exc


def unreachable(action: str, cause: object) -> InfrastructureError:
    """No engine answered (one wording for this client and the SDK's, in ``images``)."""
    msg = f"Docker engine unreachable while trying to {action}: {cause}"
    return InfrastructureError(msg, fix=ENGINE_FIX)


def refused(action: str, message: object, status: int | None) -> InfrastructureError:
    """The engine answered with an error status."""
    return InfrastructureError(f"Docker engine refused to {action}: {message}", status_code=status)


def is_not_found(exc: InfrastructureError) -> bool:
    return exc.details.get("status_code") == 404


RUNSC_FIX = (
    "apt-get install runsc, register it in /etc/docker/daemon.json as runtime 'runsc' with "
    'runtimeArgs ["--network=none", "--oci-seccomp"] and restart dockerd (scripts/engine.sh '
    "writes exactly this config)"
)


def missing_runtime(runtime: str, message: str) -> InfrastructureError:
    """The policy asks for a runtime the engine does not have registered."""
    fix = (
        RUNSC_FIX
        if runtime == "runsc"
        else f"register the runtime {runtime!r} in /etc/docker/daemon.json and restart dockerd"
    )
    msg = f"the policy's runtime {runtime!r} is not registered in the engine ({message})"
    return InfrastructureError(msg, fix=fix, runtime=runtime)


def unseen_pipe(message: str) -> InfrastructureError:
    """The engine cannot mount the run's stdout pipe: it does not see this process's TMPDIR."""
    return InfrastructureError(
        f"the Docker engine cannot mount the run's stdout pipe ({message})",
        fix="set TMPDIR to a directory the engine sees too (not a private /tmp, e.g. under "
        "systemd's PrivateTmp, or a coordinator's own container)",
    )


def short_name(image: str) -> str:
    """``sandbox/dbt:latest`` -> ``dbt``: the directory under images/ that builds it."""
    return image.split("@")[0].rsplit("/", 1)[-1].split(":")[0]


def missing_image(name: str) -> InfrastructureError:
    """The engine has no such image: say how to build it."""
    msg = f"image {name} is not present in the engine"
    fix = f"build it: `sandbox images build {short_name(name)}` (or `make images` for all)"
    return InfrastructureError(msg, fix=fix, image=name)


class Demuxer:
    """Splits Docker's multiplexed attach stream (8-byte headers: stream, 0, 0, 0, size).

    Payload bytes are passed on as soon as they arrive (a frame split across reads comes out
    in pieces) and never buffered: only a header cut by a read boundary waits for the next
    read. Each byte is copied at most once here, so the attach socket's rate is what counts."""

    def __init__(self) -> None:
        self._head = b""
        self._need = 0
        self._stream: StreamName = "stdout"

    def feed(self, data: bytes) -> list[tuple[StreamName, bytes]]:
        """The payload bytes of one read: one piece per run of frames of the same stream (the
        engine frames its output in pieces of ≤32 KiB; joined, a read's bytes go downstream
        in one step, and a line cut only by the framing comes out whole). One copy at most:
        ``join`` hands back a read that is one frame's payload as it is."""
        if self._head:
            data = self._head + data
            self._head = b""
        out: list[tuple[StreamName, bytes]] = []
        pieces: list[bytes | memoryview] = []
        stream = self._stream
        pos, end = 0, len(data)
        while pos < end:
            if self._need == 0:
                if end - pos < 8:
                    self._head = data[pos:]
                    break
                kind, size = _HEADER.unpack_from(data, pos)
                pos += 8
                named = _STREAMS.get(kind, "stderr")
                if named != stream and pieces:
                    out.append((stream, b"".join(pieces)))
                    pieces = []
                stream = named
                self._need = size
                continue
            take = min(self._need, end - pos)
            pieces.append(data if take == end else memoryview(data)[pos : pos + take])
            pos += take
            self._need -= take
        if pieces:
            out.append((stream, b"".join(pieces)))
        self._stream = stream
        return out


@functools.cache
def batch_bytes() -> int:
    """SO_RCVLOWAT for a bulk stream (read once per process): half of what the engine's end of
    the socket can hold, or a read would wait BATCH_WAIT every time. The engine's end has the
    default send buffer; in its writes it holds about that much (204,793 of 212,992 bytes
    measured here), so half leaves the engine room for three more writes while a read waits,
    and never less than two where the buffer is small."""
    try:
        wmem = int(_WMEM_DEFAULT.read_text())
    except (OSError, ValueError):
        wmem = 0  # unknown: no batching
    return max(0, min(_BATCH_MAX_BYTES, wmem // 2, wmem - 2 * ENGINE_WRITE_BYTES))


class DockerAttachment:
    """A hijacked attach connection: stdin in, multiplexed stdout/stderr out; or, with a stdout
    pipe, stdin in and stderr out, stdout read from the pipe."""

    def __init__(self, sock: socket.socket, early: bytes = b"", pipe: int | None = None) -> None:
        self._sock = sock
        self._early = early  # stream bytes that came with the upgrade's response head
        self._pipe = pipe
        self._writer: threading.Thread | None = None
        self._closed = False
        self._batched = False

    def send_stdin(self, data: bytes) -> None:
        # The daemon forwards stdin only once the container runs: write from a thread so a
        # request larger than the socket buffers cannot block start().
        def write() -> None:
            try:
                self._sock.sendall(data)
                self._sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                logger.debug("stdin write ended early: {}", exc)

        self._writer = threading.Thread(target=write, name="sandbox-stdin", daemon=True)
        self._writer.start()

    def chunks(self) -> Iterator[tuple[StreamName, bytes]]:
        demux = Demuxer()
        if self._early:
            yield from demux.feed(self._early)
            self._early = b""
        if self._pipe is not None:
            yield from self._piped_chunks(demux, self._pipe)
            return
        while True:
            try:
                data = self._recv()
            except BlockingIOError:
                self._batch(on=False)  # nothing for BATCH_WAIT: the stream went quiet
                continue
            if not data:
                return
            if not self._batched and len(data) >= BULK_READ_BYTES:
                self._batch(on=True)
            yield from demux.feed(data)

    def _piped_chunks(self, demux: Demuxer, pipe: int) -> Iterator[tuple[StreamName, bytes]]:
        """Stdout from the pipe, stderr from the socket, each as it arrives, until the socket
        ends (the container's stdio closed); then what is left in the pipe."""
        sock = self._sock.fileno()
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        poller.register(pipe, select.POLLIN)
        pipe_open = True
        while True:
            for fd, _ in poller.poll():
                if fd == pipe:
                    data = _read_pipe(pipe)
                    if data:
                        yield "stdout", data
                    elif data == b"":  # every writer closed it: stdout is done
                        poller.unregister(pipe)
                        pipe_open = False
                    continue
                data = self._recv()
                if not data:
                    if pipe_open:
                        yield from self._drained(pipe)
                    return
                yield from demux.feed(data)

    def _recv(self) -> bytes:
        """One read of the socket; b"" at its end or once ``close()`` was called. A batched
        read that timed out raises BlockingIOError."""
        try:
            return self._sock.recv(_RECV_BYTES)
        except BlockingIOError:
            raise
        except OSError as exc:
            if self._closed:
                return b""
            msg = f"lost the container's output stream: {exc}"
            raise InfrastructureError(msg, fix=ENGINE_FIX) from exc

    def _drained(self, pipe: int) -> Iterator[tuple[StreamName, bytes]]:
        poller = select.poll()
        poller.register(pipe, select.POLLIN)
        quiet_until = time.monotonic() + PIPE_DRAIN_S
        while not self._closed:
            if not poller.poll(_PIPE_POLL_MS):
                if time.monotonic() >= quiet_until:
                    return  # no writer ever opened it
                continue
            data = _read_pipe(pipe)
            if data == b"":
                return
            if data:
                yield "stdout", data

    def _batch(self, *, on: bool) -> None:
        lowat, wait_us = (batch_bytes(), BATCH_WAIT_US) if on else (1, 0)
        if on and lowat <= 1:
            return
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
            self._sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 0, wait_us)
            )
        except OSError as exc:  # a closed socket: the next read says so
            logger.debug("read batching not changed: {}", exc)
            return
        self._batched = on

    def close(self) -> None:
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            logger.debug("attach socket already shut")
        self._sock.close()


def _read_pipe(fd: int) -> bytes | None:
    """What the pipe holds; b"" once every writer has closed it, None if it is empty."""
    try:
        return os.read(fd, _PIPE_READ_BYTES)
    except BlockingIOError:
        return None


class DockerRuntime:
    """``ContainerRuntime`` over the Engine API."""

    def __init__(self, client: EngineClient | None = None, timeout_s: int = 60) -> None:
        self._given = client
        self._timeout_s = timeout_s
        self._client: EngineClient | None = None
        self._checked_images: set[tuple[str, str]] = set()
        self._pipe_images: set[str] = set()
        self._counters = CgroupCounters()

    @property
    def client(self) -> EngineClient:
        if self._client is None:
            with translated("connect"):
                self._client = self._given or EngineClient(timeout_s=self._timeout_s)
        return self._client

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.client.request(method, path, **kwargs)

    def _retrying(self, action: str, call: Callable[[], T]) -> T:
        with translated(action):
            return transient_retry(action, _is_transient)(call)()

    def check_image(self, name: str, pinned_id: str) -> None:
        if (name, pinned_id) in self._checked_images:
            return
        try:
            found = self._retrying(
                "inspect image", lambda: self._call("GET", image_path(name, "/json"))
            )
        except InfrastructureError as exc:
            if not is_not_found(exc):
                raise
            raise missing_image(name) from exc
        actual = found["Id"]
        if actual != pinned_id:
            msg = f"image {name} is {actual}, but the policy pins {pinned_id}"
            raise InfrastructureError(
                msg,
                fix="rebuild the image from the pinned sources, or review and run "
                "`sandbox images lock` to pin the image you built",
                image=name,
                actual_id=actual,
                pinned_id=pinned_id,
            )
        if ((found.get("Config") or {}).get("Labels") or {}).get(LABEL_STDOUT_PIPE) == "1":
            self._pipe_images.add(pinned_id)
        self._checked_images.add((name, pinned_id))

    def takes_stdout_pipe(self, pinned_id: str, runtime: str) -> bool:
        # runc only: a host's named pipe is a kernel object the container must share. gVisor
        # (2022-12 here) refuses to mount one ("failed to mount ... operation not permitted"),
        # and a virtual-machine runtime could not pass it through at all.
        return runtime == PIPE_RUNTIME and pinned_id in self._pipe_images

    def create(self, spec: ContainerSpec) -> str:
        body = spec.engine_body()
        run_id = dict(spec.labels)[LABEL_RUN_ID]

        def create_once() -> str:
            try:
                made = self._call(
                    "POST", "/containers/create", params={"name": spec.name}, body=body
                )
                return str(made["Id"])
            except EngineError as exc:
                if exc.status == 400 and "unknown runtime" in exc.message.lower():
                    raise missing_runtime(spec.runtime, exc.message) from exc
                if exc.status == 400 and spec.stdout_pipe and spec.stdout_pipe in exc.message:
                    raise unseen_pipe(exc.message) from exc
                if exc.status != 409:
                    raise
                # A retried create whose first attempt reached the engine: adopt it if ours.
                found = self._call("GET", container_path(spec.name, "/json"))
                if (found["Config"]["Labels"] or {}).get(LABEL_RUN_ID) != run_id:
                    raise
                return str(found["Id"])

        return self._retrying("create the container", create_once)

    def attach(self, container_id: str, stdout_pipe: int | None = None) -> Attachment:
        stdout = 0 if stdout_pipe is not None else 1
        params = {"stdin": 1, "stdout": stdout, "stderr": 1, "stream": 1, "logs": 0}
        with translated("attach to the container"):
            sock, early = self.client.hijack(container_path(container_id, "/attach"), params)
        # The client's request timeout would end a quiet run's stream; the watchdog bounds it.
        sock.settimeout(None)
        return DockerAttachment(sock, early, stdout_pipe)

    def start(self, container_id: str) -> None:
        with translated("start the container"):
            self._call("POST", container_path(container_id, "/start"))

    def kill(self, container_id: str) -> None:
        try:
            with translated("kill the container"):
                self._call("POST", container_path(container_id, "/kill"))
        except InfrastructureError as exc:
            if exc.details.get("status_code") in (404, 409):
                return  # gone or not running: the goal is met
            raise

    def wait(self, container_id: str, timeout_s: float) -> ExitState:
        with translated("wait for the container"):
            status = self._call(
                "POST", container_path(container_id, "/wait"), timeout_s=int(timeout_s) + 1
            )
        state = self._retrying(
            "inspect the container",
            lambda: self._call("GET", container_path(container_id, "/json"))["State"],
        )
        return ExitState(
            exit_code=int((status or {}).get("StatusCode", state.get("ExitCode", -1))),
            oom_killed=bool(state.get("OOMKilled", False)),
        )

    def remove(self, container_id: str) -> None:
        def remove_once() -> None:
            try:
                self._call("DELETE", container_path(container_id), params={"force": "1", "v": "1"})
            except EngineError as exc:
                if exc.status == 404:
                    return
                if exc.status == 409 and "already in progress" in exc.message:
                    return
                raise

        self._counters.forget(container_id)
        self._retrying("remove the container", remove_once)

    def usage(self, container_id: str) -> ResourceUsage:
        # The engine API has no "pids limit was hit" counter; the container's cgroup does.
        return ResourceUsage(
            pids_limit_hits=self._counters.read(container_id, _PIDS_EVENTS, prefix="max "),
            memory_peak_bytes=self._counters.read(container_id, _MEMORY_PEAK),
        )

    def list_managed(self) -> list[ManagedContainer]:
        filters = json.dumps({"label": [LABEL_MANAGED]})
        found = self._retrying(
            "list containers",
            lambda: self._call("GET", "/containers/json", params={"all": "1", "filters": filters}),
        )
        return [
            ManagedContainer(
                id=c["Id"],
                name=(c.get("Names") or ["?"])[0].lstrip("/"),
                labels=dict(c.get("Labels") or {}),
                state=str(c.get("State", "")),
            )
            for c in found
        ]

    def info(self) -> EngineInfo:
        with translated("read the engine's version"):
            version = self._call("GET", "/version")
            info = self._call("GET", "/info")
        runtimes = info.get("Runtimes") or {}
        return EngineInfo(
            version=str(version.get("Version", "?")),
            api_version=str(version.get("ApiVersion", "?")),
            runtimes=tuple(sorted(runtimes.keys())),
            cgroup_version=str(info.get("CgroupVersion", "?")),
            components=tuple(
                (str(c.get("Name", "?")), str(c.get("Version", "?")))
                for c in version.get("Components") or []
            ),
            runtime_args=tuple(
                (name, tuple(str(a) for a in (spec or {}).get("runtimeArgs") or []))
                for name, spec in sorted(runtimes.items())
            ),
            root_dir=str(info.get("DockerRootDir", "")),
            security_options=tuple(str(o) for o in info.get("SecurityOptions") or []),
        )
