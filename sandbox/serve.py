"""``sandbox serve``: many concurrent runs of one coordinator multiplexed onto JSON-RPC 2.0 over
stdio (contract section 4; the wire details are in docs/serve.md).

Threads: one reader (stdin lines -> dispatch), one writer (the only one touching stdout), one
thread per running run, and the caller's, which waits for a stop request and winds down. The
writer is fed through a buffer bounded in bytes: when the client reads slowly, run threads block
on it, stop reading their container's attach socket, and the engine throttles the container, so
memory stays bounded whatever the tools print.

One addition to the contract's messages, needed because runs are concurrent and ``event`` params
are exactly a frame: before any event of a run the server sends the notification ``run.assigned``
``{id, run_id, queued}``, which maps the client's request id to the run's id.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from pydantic import ValidationError

from . import __version__
from .coordinator import new_run_id, refused_frames
from .errors import InfrastructureError, Interrupted, InvalidRequest, SandboxError
from .frames import PROTOCOL_VERSION, Frame, encode
from .hostcheck import HostSnapshot
from .log import logger
from .metrics import Job, Metrics
from .policy import tool_rows
from .request import MAX_REQUEST_BYTES, Request, loads_request, request_from_data
from .rpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    QUEUE_FULL,
    SANDBOX_ERROR,
    SHUTTING_DOWN,
    UNKNOWN_RUN,
    CancelParams,
    NoParams,
    RpcError,
    RpcErrorObject,
    RpcId,
    RpcRequest,
    RunAssigned,
    ShutdownParams,
    _echo_id,
    _first_error,
    _params,
)
from .runtime import EngineInfo
from .stdio import WRITE_BUFFER_BYTES, LineWriter, Piece, read_lines

# A request object plus the JSON-RPC envelope around it.
MAX_MESSAGE_BYTES = MAX_REQUEST_BYTES + 64 * 1024
DEFAULT_QUEUE = 64
MEMORY_PER_RUN_MB = 512

_EVENT_PREFIX = b'{"jsonrpc":"2.0","method":"event","params":'
# Below this, copying a line to wrap it costs less than handing the writer three pieces.
_WRAP_IN_PLACE_BYTES = 16 * 1024


def default_max_concurrent(host: HostSnapshot) -> int:
    """One run per core, as long as each can have 512 MiB of the available memory."""
    return max(1, min(host.cpu_count, host.available_memory_mb // MEMORY_PER_RUN_MB))


# --- the server -------------------------------------------------------------------------------


class Backend(Protocol):
    """What the server needs of ``Coordinator`` (a fake in unit tests)."""

    policy_dir: Path

    def run_batches(
        self,
        request: Request | SandboxError,
        *,
        run_id: str | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[list[Frame]]: ...


@dataclass(frozen=True)
class ServeOptions:
    max_concurrent: int
    """Runs with a container at once."""
    queue_max: int = DEFAULT_QUEUE
    """Runs waiting for a slot; one more is refused with QUEUE_FULL."""
    shutdown_grace_s: float = 30.0
    """How long a stop waits for cancelled runs (and then for the client to read)."""
    write_buffer_bytes: int = WRITE_BUFFER_BYTES
    """Output waiting for the client, beyond which producers block."""


_DEFERRED = object()  # a handler's "the answer comes later"


class Server:
    """JSON-RPC 2.0 over a pair of byte streams, running requests on ``backend``."""

    def __init__(
        self,
        backend: Backend,
        stdin: BinaryIO,
        stdout: BinaryIO,
        *,
        options: ServeOptions,
        engine_info: Callable[[], EngineInfo],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backend = backend
        self._in = stdin
        self._opts = options
        self._engine_info = engine_info
        self._clock = clock
        self._writer = LineWriter(
            stdout,
            max_bytes=options.write_buffer_bytes,
            on_broken=lambda: self.request_stop(cancel=True, reason="stdout closed"),
        )
        self._metrics = Metrics(clock)
        # Reentrant: a signal handler may call request_stop while this thread holds the lock.
        self._lock = threading.Condition(threading.RLock())
        self._running: dict[str, Job] = {}
        self._queued: collections.deque[Job] = collections.deque()
        self._accepting = True
        self._drain = False
        self._stop_reason = ""
        self._stop = threading.Event()
        self._shutdown_callers: list[RpcId] = []
        # `health` answers from threads of its own: a stop waits for them, so that every call
        # is answered, the `shutdown` call last.
        self._health_answers: list[threading.Thread] = []
        self._methods: dict[str, Callable[[RpcRequest], Any]] = {
            "run": self._m_run,
            "cancel": self._m_cancel,
            "tools": self._m_tools,
            "health": self._m_health,
            "metrics": self._m_metrics,
            "shutdown": self._m_shutdown,
        }

    # --- lifecycle -----------------------------------------------------------------------------

    def serve(self) -> int:
        """Serve until EOF, ``shutdown`` or ``request_stop``; every call is answered. Returns 0."""
        self._writer.start()
        reader = threading.Thread(target=self._read_loop, name="serve-reader", daemon=True)
        reader.start()
        while not self._stop.wait(0.2):  # a timed wait, so signal handlers run promptly
            pass
        self._wind_down()
        return 0

    def request_stop(self, *, cancel: bool, reason: str, eof: bool = False) -> None:
        """Stop taking runs; ``cancel`` also stops the running and queued ones. EOF after a
        ``shutdown`` keeps that shutdown's mode (a client closes stdin after asking to drain)."""
        with self._lock:
            if eof and self._stop.is_set():
                return
            first = not self._stop.is_set()
            self._accepting = False
            self._drain = not cancel and (first or self._drain)
            self._stop_reason = self._stop_reason or reason
            self._stop.set()
            self._lock.notify_all()

    def _wind_down(self) -> None:
        logger.info("stopping ({}): no new runs", self._stop_reason)
        if not self._wait_for_runs():
            # Runs blocked on a client that stopped reading cannot remove their containers:
            # drop the unread output so that they can, and give them one more grace period.
            logger.warning("runs still busy after {}s; dropping unread output", self._grace)
            self._writer.abandon()
            if not self._wait_for_runs():
                logger.error("runs did not end within {}s; leaving them", 2 * self._grace)
        with self._lock:
            answering = list(self._health_answers)
        for answer in answering:
            answer.join(self._grace)
        with self._lock:
            callers, self._shutdown_callers = self._shutdown_callers, []
        for rpc_id in callers:
            self._respond(rpc_id, {})
        self._writer.close(self._grace)
        logger.info("stopped")

    def _wait_for_runs(self) -> bool:
        """Wait until no run is left: as long as it takes while draining, else cancel them all
        and wait one grace period at most. True when none is left."""
        deadline: float | None = None
        while True:
            with self._lock:
                if not self._running and not self._queued:
                    return True
                if self._drain:
                    self._lock.wait(0.2)
                    continue
            self._cancel_all()
            deadline = self._clock() + self._grace if deadline is None else deadline
            if self._clock() >= deadline:
                return False
            with self._lock:
                self._lock.wait(0.1)

    @property
    def _grace(self) -> float:
        return self._opts.shutdown_grace_s

    def _cancel_all(self) -> None:
        with self._lock:
            queued = list(self._queued)
            self._queued.clear()
            for job in self._running.values():
                job.cancel.set()
        for job in queued:
            self._refuse(job, Interrupted("the server is shutting down; the run never started"))

    # --- reading and dispatch ------------------------------------------------------------------

    def _read_loop(self) -> None:
        try:
            for line in read_lines(self._in, MAX_MESSAGE_BYTES):
                self._handle_line(line)
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed under us
            logger.warning("reading stdin failed: {}", exc)
        self.request_stop(cancel=True, reason="end of stdin", eof=True)

    def _handle_line(self, line: bytes | None) -> None:
        if line is None:
            self._error(None, INVALID_REQUEST, f"message longer than {MAX_MESSAGE_BYTES} bytes")
            return
        if not line.strip():
            return
        try:
            data = loads_request(line.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            self._error(None, PARSE_ERROR, f"parse error: {exc}")
            return
        if isinstance(data, list):
            self._error(None, INVALID_REQUEST, "batches are not supported: one message a line")
            return
        try:
            message = RpcRequest.model_validate(data)
        except ValidationError as exc:
            self._error(_echo_id(data), INVALID_REQUEST, f"invalid request: {_first_error(exc)}")
            return
        self._dispatch(message)

    def _dispatch(self, message: RpcRequest) -> None:
        handler = self._methods.get(message.method)
        if message.is_notification:
            self._dispatch_notification(message, handler)
            return
        if handler is None:
            self._error(message.id, METHOD_NOT_FOUND, f"method not found: {message.method!r}")
            return
        try:
            result = handler(message)
        except RpcError as exc:
            self._error(message.id, exc.body.code, exc.body.message, exc.body.data)
        except SandboxError as exc:
            self._error(message.id, SANDBOX_ERROR, str(exc), _error_data(exc))
        except Exception as exc:  # noqa: BLE001 - a bug answers one call and keeps serving
            logger.error("internal error in {}", message.method, exception=exc)
            self._error(message.id, INTERNAL_ERROR, f"internal error: {type(exc).__name__}")
        else:
            if result is not _DEFERRED:
                self._respond(message.id, result)

    def _dispatch_notification(
        self, message: RpcRequest, handler: Callable[[RpcRequest], Any] | None
    ) -> None:
        # Only calls whose answer nobody needs make sense without an id.
        if handler is None or message.method not in ("cancel", "shutdown"):
            logger.warning("ignored notification {!r}: it needs an id", message.method)
            return
        try:
            handler(message)
        except (RpcError, SandboxError) as exc:
            logger.warning("notification {!r} failed: {}", message.method, exc)

    # --- methods -------------------------------------------------------------------------------

    def _m_run(self, message: RpcRequest) -> object:
        if not isinstance(message.params, dict):
            text = "run takes the request object as params: {tool, args, inputs, ...}"
            raise RpcError(INVALID_PARAMS, text)
        try:
            request: Request | SandboxError = request_from_data(message.params)
        except InvalidRequest as exc:
            request = exc
        job = Job(message.id, new_run_id(), request, received=self._clock())
        if isinstance(request, SandboxError):
            self._check_accepting()
            self._announce(job, queued=False)
            self._refuse(job, request)  # answered like the CLI: error and exit frames
        else:
            self._announce(job, queued=self._submit(job))
        return _DEFERRED

    def _check_accepting(self) -> None:
        with self._lock:
            if not self._accepting:
                text = "the server is shutting down; it takes no new runs"
                raise RpcError(SHUTTING_DOWN, text)

    def _submit(self, job: Job) -> bool:
        """Start the job or queue it; True when queued."""
        with self._lock:
            self._check_accepting()
            if len(self._running) < self._opts.max_concurrent:
                self._start_locked(job)
                return False
            if len(self._queued) >= self._opts.queue_max:
                text = f"the queue is full ({len(self._queued)} runs waiting)"
                raise RpcError(QUEUE_FULL, text, self._gauges())
            self._queued.append(job)
            return True

    def _m_cancel(self, message: RpcRequest) -> dict[str, Any]:
        run_id = _params(CancelParams, message).run_id
        with self._lock:
            running = self._running.get(run_id)
            if running is not None and running.answered:
                running = None
            queued = next((job for job in self._queued if job.run_id == run_id), None)
            if queued is not None:
                self._queued.remove(queued)
        if running is not None:
            running.cancel.set()  # the watchdog kills; the run's answer follows removal
            return {"run_id": run_id, "was": "running"}
        if queued is not None:
            self._refuse(queued, Interrupted("cancelled while queued; the run never started"))
            return {"run_id": run_id, "was": "queued"}
        text = f"no running or queued run {run_id!r}"
        raise RpcError(UNKNOWN_RUN, text, {"run_id": run_id})

    def _m_tools(self, message: RpcRequest) -> list[dict[str, Any]]:
        _params(NoParams, message)
        return tool_rows(self._backend.policy_dir)

    def _m_health(self, message: RpcRequest) -> object:
        _params(NoParams, message)
        # The engine may take its client timeout to answer: never stall the reader on it.
        answer = threading.Thread(
            target=lambda: self._respond(message.id, self._health()),
            name="serve-health",
            daemon=True,
        )
        with self._lock:
            self._health_answers = [t for t in self._health_answers if t.is_alive()]
            self._health_answers.append(answer)
        answer.start()
        return _DEFERRED

    def _health(self) -> dict[str, Any]:
        engine: dict[str, Any] = {"reachable": False}
        try:
            info = self._engine_info()
        except Exception as exc:  # noqa: BLE001 - whatever fails, the engine is not usable
            engine["error"] = str(exc)
        else:
            engine = {
                "reachable": True,
                "version": info.version,
                "api_version": info.api_version,
                "runtimes": list(info.runtimes),
                "cgroup_version": info.cgroup_version,
            }
        with self._lock:
            accepting = self._accepting
        return {
            "ok": bool(engine["reachable"]) and accepting,
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "accepting": accepting,
            "engine": engine,
        }

    def _m_metrics(self, message: RpcRequest) -> dict[str, Any]:
        _params(NoParams, message)
        with self._lock:
            gauges = self._gauges()
        return self._metrics.snapshot(**gauges)

    def _gauges(self) -> dict[str, Any]:
        return {
            "accepting": self._accepting,
            "max_concurrent": self._opts.max_concurrent,
            "queue_max": self._opts.queue_max,
            "active_runs": len(self._running),
            "queue_depth": len(self._queued),
        }

    def _m_shutdown(self, message: RpcRequest) -> object:
        drain = _params(ShutdownParams, message).drain
        with self._lock:
            if not message.is_notification:
                self._shutdown_callers.append(message.id)
        self.request_stop(cancel=not drain, reason="shutdown requested")
        return _DEFERRED

    # --- runs ----------------------------------------------------------------------------------

    def _start_locked(self, job: Job) -> None:
        self._running[job.run_id] = job
        name = f"serve-run-{job.run_id[:8]}"
        threading.Thread(target=self._execute, args=(job,), name=name, daemon=True).start()

    def _announce(self, job: Job, *, queued: bool) -> None:
        try:
            params = RunAssigned(id=job.rpc_id, run_id=job.run_id, queued=queued)
            self._notify("run.assigned", params.model_dump())
        finally:
            job.announced.set()  # frames of the run may follow only now

    def _execute(self, job: Job) -> None:
        job.announced.wait()
        job.began = self._clock()
        try:
            batches = self._backend.run_batches(job.request, run_id=job.run_id, cancel=job.cancel)
            last = self._emit(job, batches)
        except Exception as exc:  # noqa: BLE001 - the call must still be answered
            logger.error("run {} failed inside the server", job.run_id, exception=exc)
            last = None
        try:
            if last is None:
                error = InfrastructureError("internal error: the run ended without an exit frame")
                last = self._emit(job, [refused_frames(error, job.run_id)])
            with self._lock:
                # Before the answer leaves: a client that has it may cancel at once, and must
                # hear that the run is no longer running (the answer may be written right here,
                # ahead of the slot's release).
                job.answered = True
            self._respond(job.rpc_id, last)
        finally:
            self._release(job)

    def _refuse(self, job: Job, error: SandboxError) -> None:
        """Answer a run that never gets a container: error and exit frames, then the exit."""
        job.announced.wait()
        self._respond(job.rpc_id, self._emit(job, [refused_frames(error, job.run_id)]))

    def _emit(self, job: Job, batches: Iterable[list[Frame]]) -> Frame | None:
        """Send each frame as an ``event``, a batch with one write; the exit frame, or None if
        the run did not end."""
        last: Frame | None = None
        for batch in batches:
            pieces: list[Piece] = []
            for frame in batch:
                self._metrics.frame(job, frame)
                pieces.extend(self._event_pieces(frame))
                last = frame
            if pieces:
                self._writer.put_many(pieces)
        return last if last is not None and last.get("type") == "exit" else None

    def _release(self, job: Job) -> None:
        with self._lock:
            self._running.pop(job.run_id, None)
            if self._queued and (self._accepting or self._drain):
                self._start_locked(self._queued.popleft())
            self._lock.notify_all()

    # --- writing -------------------------------------------------------------------------------

    def _event_pieces(self, frame: Frame) -> tuple[Piece, ...]:
        """An ``event`` notification around the frame's line: the same bytes as encoding the
        whole message, without encoding a large payload a second time. A large line is not
        even copied: it goes out as three pieces, which the writer gathers into one write."""
        try:
            line = encode(frame)
        except ValueError as exc:  # frames are strict JSON; this would be a bug
            logger.error("could not encode a frame: {}", exc)
            return ()
        if len(line) < _WRAP_IN_PLACE_BYTES:
            return (b"".join((_EVENT_PREFIX, memoryview(line)[:-1], b"}\n")),)
        return (_EVENT_PREFIX, memoryview(line)[:-1], b"}\n")

    def _notify(self, method: str, params: dict[str, Any]) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def _respond(self, rpc_id: RpcId, result: Any) -> None:
        self._send({"jsonrpc": "2.0", "id": rpc_id, "result": result})

    def _error(
        self, rpc_id: RpcId, code: int, message: str, data: dict[str, Any] | None = None
    ) -> None:
        self._metrics.rpc_error(code)
        body = RpcErrorObject(code=code, message=message, data=data)
        self._send({"jsonrpc": "2.0", "id": rpc_id, "error": body.model_dump(exclude_none=True)})

    def _send(self, message: dict[str, Any]) -> None:
        try:
            line = encode(message)
        except ValueError as exc:  # frames are strict JSON; this would be a bug
            logger.error("could not encode a message: {}", exc)
            return
        self._writer.put(line)


def _error_data(exc: SandboxError) -> dict[str, Any]:
    details = {k: v if isinstance(v, str | int | float) else str(v) for k, v in exc.details.items()}
    return {"kind": exc.kind, "status": exc.status, "message": exc.message, "details": details}
