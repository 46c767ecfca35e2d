"""``sandbox serve``'s JSON-RPC protocol over real pipes, with a scripted backend instead of the
coordinator (no Docker): message errors, correlation, queueing, cancel, backpressure, shutdown."""

from __future__ import annotations

import fcntl
import json
import os
import queue
import select
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sandbox.coordinator import Coordinator, refused_frames
from sandbox.errors import InfrastructureError, SandboxError
from sandbox.fake_runtime import FakeContainer, FakeRuntime
from sandbox.frames import Frame, FrameFactory
from sandbox.hostcheck import HostSnapshot
from sandbox.metrics import percentile
from sandbox.request import Request
from sandbox.rpc import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    QUEUE_FULL,
    SHUTTING_DOWN,
    UNKNOWN_RUN,
)
from sandbox.runtime import EngineInfo
from sandbox.serve import MAX_MESSAGE_BYTES, Backend, ServeOptions, Server, default_max_concurrent
from sandbox.stdio import LineWriter, read_lines, write_all

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0


@dataclass
class FakeBackend:
    """Scripted runs chosen by ``args.case``: echo, block (until cancelled or released),
    flood (``count`` data frames), crash (raises mid-run)."""

    policy_dir: Path
    release: threading.Event = field(default_factory=threading.Event)
    started: list[str] = field(default_factory=list)
    produced: int = 0
    active: int = 0
    peak: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run_batches(
        self,
        request: Request | SandboxError,
        *,
        run_id: str | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[list[Frame]]:
        """The frames one at a time, except a flood's data, which comes ten to a batch."""
        batch: list[Frame] = []
        for frame in self.run(request, run_id=run_id, cancel=cancel):
            batch.append(frame)
            if frame["type"] != "data" or len(batch) == 10:
                yield batch
                batch = []
        if batch:
            yield batch

    def run(
        self,
        request: Request | SandboxError,
        *,
        run_id: str | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[Frame]:
        assert run_id is not None
        assert cancel is not None
        if isinstance(request, SandboxError):
            yield from refused_frames(request, run_id)
            return
        with self.lock:
            self.started.append(run_id)
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            yield from self._script(request, FrameFactory(run_id), cancel)
        finally:
            with self.lock:
                self.active -= 1

    def _script(
        self, request: Request, f: FrameFactory, cancel: threading.Event
    ) -> Iterator[Frame]:
        case = request.args.get("case", "echo")
        yield f.make(
            "accepted",
            tool=request.tool,
            image="fake",
            image_id="sha256:0",
            policy_sha256="0",
            limits={},
        )
        yield f.make("started", container_id="c" * 64)
        status = "ok"
        if case == "block":
            while not cancel.is_set() and not self.release.is_set():
                time.sleep(0.01)
            status = "interrupted" if cancel.is_set() else "ok"
        elif case == "flood":
            for i in range(int(request.args["count"])):
                if cancel.is_set():  # the killed container's stream ends
                    status = "interrupted"
                    break
                self.produced += 1
                yield f.make("data", payload={"i": i, "pad": "x" * 1000})
        elif case == "crash":
            raise RuntimeError("bug")
        yield f.make("result", payload={"case": case})
        yield f.make(
            "exit",
            status=status,
            exit_code=0,
            oom_killed=False,
            duration_s=0.5,
            outputs=[],
            refused=[],
        )


class Client:
    """The test's end of the pipes: sends lines, collects parsed messages on a thread."""

    def __init__(self, backend: Backend, *, read: bool = True, **options: Any) -> None:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        self.backend = backend
        self.engine_error: Exception | None = None
        self._server_in = os.fdopen(in_r, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        self._server_out = os.fdopen(out_w, "wb", buffering=0)  # noqa: SIM115
        self.server = Server(
            backend,
            self._server_in,
            self._server_out,
            options=ServeOptions(**{"max_concurrent": 2, "shutdown_grace_s": 5, **options}),
            engine_info=self._engine_info,
        )
        self._to_server = os.fdopen(in_w, "wb", buffering=0)  # noqa: SIM115
        self._from_server = os.fdopen(out_r, "rb")  # noqa: SIM115
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.rc: int | None = None
        self._serving = threading.Thread(target=self._serve, daemon=True)
        self._serving.start()
        self._reading = threading.Thread(target=self._read, daemon=True)
        if read:
            self.start_reading()

    def _engine_info(self) -> EngineInfo:
        if self.engine_error is not None:
            raise self.engine_error
        return EngineInfo("20.10.24", "1.41", ("runc", "runsc"), "1")

    def _serve(self) -> None:
        self.rc = self.server.serve()

    def _read(self) -> None:
        for line in self._from_server:
            self.messages.put(json.loads(line))

    def start_reading(self) -> None:
        self._reading.start()

    def send(self, message: dict[str, Any] | bytes) -> None:
        data = message if isinstance(message, bytes) else json.dumps(message).encode()
        self._to_server.write(data + b"\n")

    def call(self, method: str, params: Any = None, id_: Any = 1) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)

    def next(self) -> dict[str, Any]:
        return self.messages.get(timeout=TIMEOUT)

    def until_response(self, id_: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Messages up to (and the response with) ``id_``."""
        before = []
        while True:
            message = self.next()
            if "method" not in message and message.get("id") == id_:
                return before, message
            before.append(message)

    def responses(self, count: int) -> dict[Any, dict[str, Any]]:
        """The next ``count`` responses by id, skipping notifications."""
        found: dict[Any, dict[str, Any]] = {}
        while len(found) < count:
            message = self.next()
            if "method" not in message:
                found[message["id"]] = message
        return found

    def close_stdin(self) -> None:
        self._to_server.close()

    def wait_stopped(self) -> int:
        self._serving.join(TIMEOUT)
        assert not self._serving.is_alive(), "server did not stop"
        assert self.rc is not None
        return self.rc

    def close(self) -> None:
        if not self._to_server.closed:
            self._to_server.close()
        release = getattr(self.backend, "release", None)
        if release is not None:
            release.set()
        self._serving.join(TIMEOUT)
        self._server_out.close()  # the reading thread sees EOF
        if self._reading.is_alive():
            self._reading.join(TIMEOUT)
        self._from_server.close()
        self._server_in.close()


@pytest.fixture
def backend(tmp_path: Path) -> FakeBackend:
    policies = tmp_path / "policies"
    policies.mkdir()
    shutil.copy(ROOT / "policies" / "testkit.yaml", policies / "testkit.yaml")
    return FakeBackend(policies)


@pytest.fixture
def client(backend: FakeBackend) -> Iterator[Client]:
    c = Client(backend)
    yield c
    c.close()


def run_params(case: str = "echo", **args: Any) -> dict[str, Any]:
    return {"tool": "testkit", "args": {"case": case, **args}}


def wait_for(predicate: Any, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


# --- message errors ---------------------------------------------------------------------------


def test_an_id_with_a_lone_surrogate_is_refused_not_echoed_altered(client: Client) -> None:
    # It came back as U+FFFD: the client could not match the answer to its call.
    client.send(b'{"jsonrpc": "2.0", "id": "\\ud800", "method": "metrics"}')
    answer = client.next()
    assert answer["id"] is None
    assert answer["error"]["code"] == INVALID_REQUEST
    assert "lone surrogate" in answer["error"]["message"]
    client.send(b'{"jsonrpc": "2.0", "id": "\\ud800", "method": 5}')
    assert client.next()["id"] is None


def test_an_invalid_id_or_param_type_is_said_in_json_terms(client: Client) -> None:
    client.send(b'{"jsonrpc": "2.0", "id": [1], "method": "metrics"}')
    error = client.next()["error"]
    assert error["message"] == "invalid request: id: must be a string, an integer or null"
    client.call("cancel", {"run_id": 5}, id_=2)
    error = client.until_response(2)[1]["error"]
    assert error["message"] == "invalid params for cancel: run_id: must be a string"


@pytest.mark.parametrize(
    ("line", "code", "id_"),
    [
        (b"{not json", PARSE_ERROR, None),
        (b"\xff\xfe", PARSE_ERROR, None),
        (b'{"jsonrpc":"2.0","id":1,"method":"metrics","params":{"x":NaN}}', PARSE_ERROR, None),
        (b"[" * 100_000, PARSE_ERROR, None),
        (b"5", INVALID_REQUEST, None),
        (b"[]", INVALID_REQUEST, None),
        (b'[{"jsonrpc":"2.0","id":1,"method":"tools"}]', INVALID_REQUEST, None),
        (b'{"jsonrpc":"1.0","id":7,"method":"tools"}', INVALID_REQUEST, 7),
        (b'{"id":"a","method":"tools"}', INVALID_REQUEST, "a"),
        (b'{"jsonrpc":"2.0","id":8,"method":3}', INVALID_REQUEST, 8),
        (b'{"jsonrpc":"2.0","id":true,"method":"tools"}', INVALID_REQUEST, None),
        (b'{"jsonrpc":"2.0","id":1.5,"method":"tools"}', INVALID_REQUEST, None),
        (b'{"jsonrpc":"2.0","id":9,"method":"tools","extra":1}', INVALID_REQUEST, 9),
        (b'{"jsonrpc":"2.0","id":9,"method":"tools","params":"x"}', INVALID_REQUEST, 9),
        (b'{"jsonrpc":"2.0","id":9,"method":"nope"}', METHOD_NOT_FOUND, 9),
        (b'{"jsonrpc":"2.0","id":9,"method":"run"}', INVALID_PARAMS, 9),
        (b'{"jsonrpc":"2.0","id":9,"method":"run","params":["testkit"]}', INVALID_PARAMS, 9),
        (b'{"jsonrpc":"2.0","id":9,"method":"cancel","params":{}}', INVALID_PARAMS, 9),
        (b'{"jsonrpc":"2.0","id":9,"method":"cancel","params":{"run_id":1}}', INVALID_PARAMS, 9),
        (b'{"jsonrpc":"2.0","id":9,"method":"metrics","params":{"x":1}}', INVALID_PARAMS, 9),
        (b'{"jsonrpc":"2.0","id":9,"method":"shutdown","params":{"drain":"y"}}', INVALID_PARAMS, 9),
    ],
)
def test_malformed_message_gets_its_error_and_the_server_keeps_serving(
    client: Client, line: bytes, code: int, id_: Any
) -> None:
    client.send(line)
    error = client.next()
    assert error["jsonrpc"] == "2.0"
    assert error["id"] == id_
    assert error["error"]["code"] == code
    assert error["error"]["message"]
    client.call("metrics", id_=2)
    _, answer = client.until_response(2)
    assert answer["result"]["rpc_errors"] == {str(code): 1}


def test_params_of_the_wrong_type_are_named_in_json_terms(client: Client) -> None:
    # The message named pydantic's union member: "params.dict[str,any]: must be a JSON object".
    client.send(b'{"jsonrpc":"2.0","id":9,"method":"tools","params":"x"}')
    error = client.next()["error"]
    assert error["message"] == "invalid request: params: must be a JSON object (named params)"


def test_line_longer_than_the_limit_is_refused_without_buffering_it(client: Client) -> None:
    client.send(b'{"pad":"' + b"x" * (MAX_MESSAGE_BYTES + 10) + b'"}')
    assert client.next()["error"]["code"] == INVALID_REQUEST
    client.call("tools", id_=3)
    _, answer = client.until_response(3)
    assert answer["result"][0]["tool"] == "testkit"


def test_an_unreadable_line_is_answered_in_order_with_the_runs_around_it(
    backend: FakeBackend,
) -> None:
    # A client matches an error with id null to the oldest run it has not seen announced
    # (docs/serve.md, Framing): each run is announced before the next line is read.
    client = Client(backend, max_concurrent=1)
    try:
        deep = b"[" * 100_000 + b"]" * 100_000
        client.call("run", run_params("block"), id_=1)
        client.send(
            b'{"jsonrpc":"2.0","id":2,"method":"run","params":{"tool":"testkit","args":'
            + deep
            + b"}}"
        )
        client.send(b'{"pad":"' + b"x" * (MAX_MESSAGE_BYTES + 10) + b'"}')
        client.call("run", run_params("block"), id_=4)
        seen = []
        while len(seen) < 4:
            message = client.next()
            if message.get("method") == "run.assigned":
                seen.append(message["params"]["id"])
            elif "error" in message:
                seen.append((message["id"], message["error"]["code"]))
        assert seen == [1, (None, PARSE_ERROR), (None, INVALID_REQUEST), 4]
        backend.release.set()
        assert client.responses(2).keys() == {1, 4}
    finally:
        client.close()


def test_blank_lines_and_notifications_get_no_answer(client: Client) -> None:
    client.send(b"")
    client.send(b"   ")
    client.send({"jsonrpc": "2.0", "method": "metrics"})
    client.send({"jsonrpc": "2.0", "method": "cancel", "params": {"run_id": "nope"}})
    client.call("health", id_="h")
    before, answer = client.until_response("h")
    assert before == []
    assert answer["result"]["ok"] is True


def test_health_reports_an_unreachable_engine_without_failing_the_call(client: Client) -> None:
    client.engine_error = InfrastructureError("Docker engine unreachable")
    client.call("health")
    _, answer = client.until_response(1)
    health = answer["result"]
    assert health["ok"] is False
    assert health["engine"] == {"reachable": False, "error": "Docker engine unreachable"}
    assert health["protocol"] == 1
    assert health["version"]


def test_tools_lists_the_policies(client: Client) -> None:
    client.call("tools", [])
    _, answer = client.until_response(1)
    (row,) = answer["result"]
    assert row["tool"] == "testkit"
    assert row["args_schema"]["type"] == "object"


# --- runs -------------------------------------------------------------------------------------


def test_run_is_assigned_first_then_streams_frames_as_events_and_answers_with_exit(
    client: Client,
) -> None:
    client.call("run", run_params(), id_="r1")
    before, answer = client.until_response("r1")
    assigned, *events = before
    assert assigned["method"] == "run.assigned"
    assert assigned["params"] == {
        "id": "r1",
        "run_id": assigned["params"]["run_id"],
        "queued": False,
    }
    run_id = assigned["params"]["run_id"]
    assert [e["method"] for e in events] == ["event"] * 4
    frames = [e["params"] for e in events]
    assert [f["type"] for f in frames] == ["accepted", "started", "result", "exit"]
    assert [f["seq"] for f in frames] == [0, 1, 2, 3]
    assert {f["run_id"] for f in frames} == {run_id}
    assert answer["result"] == frames[-1]


def test_request_failing_validation_is_a_run_with_invalid_request_exit(client: Client) -> None:
    client.call("run", {"tool": "testkit", "argz": {}})
    before, answer = client.until_response(1)
    assert before[0]["method"] == "run.assigned"
    frames = [m["params"] for m in before[1:]]
    assert [f["type"] for f in frames] == ["error", "exit"]
    assert frames[0]["error"]["kind"] == "InvalidRequest"
    assert "argz" in frames[0]["error"]["message"]
    assert answer["result"]["status"] == "invalid_request"
    assert client.backend.started == []


def test_run_that_crashes_inside_the_server_is_still_answered(client: Client) -> None:
    client.call("run", run_params("crash"))
    _, answer = client.until_response(1)
    assert answer["result"]["type"] == "exit"
    assert answer["result"]["status"] == "infrastructure_error"
    client.call("run", run_params(), id_=2)
    assert client.until_response(2)[1]["result"]["status"] == "ok"


def assignments(client: Client, count: int) -> list[dict[str, Any]]:
    found = []
    while len(found) < count:
        message = client.next()
        if message["method"] == "run.assigned":
            found.append(message["params"])
    return found


def test_runs_beyond_the_bound_wait_in_the_queue(backend: FakeBackend) -> None:
    client = Client(backend, max_concurrent=2)
    try:
        for i in range(5):
            client.call("run", run_params("block"), id_=i)
        assigned = assignments(client, 5)
        assert [a["queued"] for a in assigned] == [False, False, True, True, True]
        wait_for(lambda: len(backend.started) == 2)
        client.call("metrics", id_="m")
        metrics = client.until_response("m")[1]["result"]
        assert (metrics["active_runs"], metrics["queue_depth"]) == (2, 3)
        backend.release.set()
        assert client.responses(5).keys() == set(range(5))
        assert backend.peak == 2
    finally:
        client.close()


def test_queued_runs_start_in_fifo_order(backend: FakeBackend) -> None:
    client = Client(backend, max_concurrent=1)
    try:
        for i in range(4):
            client.call("run", run_params("block"), id_=i)
        assigned = assignments(client, 4)
        backend.release.set()
        client.responses(4)
        assert backend.started == [a["run_id"] for a in assigned]
    finally:
        client.close()


def test_full_queue_answers_with_an_error_and_no_run(backend: FakeBackend) -> None:
    client = Client(backend, max_concurrent=1, queue_max=1)
    try:
        client.call("run", run_params("block"), id_=1)
        client.call("run", run_params("block"), id_=2)
        client.call("run", run_params("block"), id_=3)
        before, answer = client.until_response(3)
        assert answer["error"]["code"] == QUEUE_FULL
        assert answer["error"]["data"]["queue_max"] == 1
        assert [m["params"]["id"] for m in before if m["method"] == "run.assigned"] == [1, 2]
    finally:
        client.close()


def test_cancel_running_run_ends_it_interrupted(client: Client) -> None:
    client.call("run", run_params("block"), id_="r")
    run_id = client.next()["params"]["run_id"]
    wait_for(lambda: client.backend.started == [run_id])
    client.call("cancel", {"run_id": run_id}, id_="c")
    answers = client.responses(2)
    assert answers["c"]["result"] == {"run_id": run_id, "was": "running"}
    assert answers["r"]["result"]["status"] == "interrupted"


def test_cancel_queued_run_answers_it_without_running_it(backend: FakeBackend) -> None:
    client = Client(backend, max_concurrent=1)
    try:
        client.call("run", run_params("block"), id_=1)
        client.call("run", run_params("block"), id_=2)
        messages = [client.next() for _ in range(4)]  # two assignments, accepted, started
        queued = [m["params"] for m in messages if m["method"] == "run.assigned"][1]
        assert queued["queued"] is True
        client.call("cancel", {"run_id": queued["run_id"]}, id_="c")
        before, answer = client.until_response(2)
        assert answer["result"]["status"] == "interrupted"
        assert [
            m["params"]["type"]
            for m in before
            if m["method"] == "event" and m["params"]["run_id"] == queued["run_id"]
        ] == ["error", "exit"]
        assert client.until_response("c")[1]["result"]["was"] == "queued"
        backend.release.set()
        client.until_response(1)
        assert queued["run_id"] not in backend.started
    finally:
        client.close()


def test_a_run_answered_is_finished_for_cancel_before_its_slot_is_released(
    backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = Server._release

    def slow_release(self: Server, job: Any) -> None:
        time.sleep(0.3)  # the answer is out; the slot is not given up yet
        release(self, job)

    monkeypatch.setattr(Server, "_release", slow_release)
    client = Client(backend)
    try:
        client.call("run", run_params(), id_=1)
        run_id = client.next()["params"]["run_id"]
        client.until_response(1)
        client.call("cancel", {"run_id": run_id}, id_="c")
        assert client.until_response("c")[1]["error"]["code"] == UNKNOWN_RUN
    finally:
        client.close()


def test_cancel_of_an_unknown_or_finished_run_is_an_error(client: Client) -> None:
    client.call("run", run_params(), id_=1)
    run_id = client.next()["params"]["run_id"]
    client.until_response(1)
    for i, target in enumerate([run_id, "never-was"]):
        client.call("cancel", {"run_id": target}, id_=f"c{i}")
        error = client.until_response(f"c{i}")[1]["error"]
        assert error["code"] == UNKNOWN_RUN
        assert error["data"] == {"run_id": target}


def test_metrics_count_runs_by_status_errors_and_latencies(client: Client) -> None:
    client.call("run", run_params(), id_=1)
    client.until_response(1)
    client.call("run", {"tool": "testkit", "bad": 1}, id_=2)
    client.until_response(2)
    client.call("metrics", id_=3)
    metrics = client.until_response(3)[1]["result"]
    assert metrics["runs"]["ok"] == 1
    assert metrics["runs"]["invalid_request"] == 1
    assert metrics["runs_total"] == 2
    assert metrics["errors"] == {"InvalidRequest": 1}
    assert metrics["active_containers"] == 0
    tool = metrics["tools"]["testkit"]
    assert tool["runs"] == 1
    assert tool["duration_s"] == {"p50": 0.5, "p95": 0.5, "count": 1}
    assert tool["start_latency_s"]["count"] == 1
    assert set(metrics["tools"]) == {"testkit"}


def test_cancel_through_the_real_coordinator_kills_and_removes_the_container(
    coordinator: Coordinator, runtime: FakeRuntime
) -> None:
    runtime.scripts.append(FakeContainer(block_until_killed=True))
    client = Client(coordinator)
    try:
        client.call("run", {"tool": "echo"}, id_="r")
        run_id = client.next()["params"]["run_id"]
        wait_for(lambda: runtime.was_called("start"))
        client.call("cancel", {"run_id": run_id}, id_="c")
        answers = client.responses(2)
        assert answers["r"]["result"]["status"] == "interrupted"
        assert runtime.was_called("kill")
        assert runtime.was_called("remove")
        assert runtime.live == {}
    finally:
        client.close()


# --- backpressure -----------------------------------------------------------------------------


def test_slow_reader_blocks_producers_instead_of_buffering(backend: FakeBackend) -> None:
    client = Client(backend, read=False, write_buffer_bytes=64 * 1024)
    try:
        client.call("run", run_params("flood", count=5000), id_=1)
        time.sleep(1.0)
        # ~1 KiB frames: the 64 KiB buffer, one pipe buffer and the frame in hand, no more.
        stalled_at = backend.produced
        assert stalled_at < 1000
        time.sleep(0.3)
        assert backend.produced == stalled_at
        client.start_reading()
        before, answer = client.until_response(1)
        assert answer["result"]["status"] == "ok"
        assert len([m for m in before if m.get("method") == "event"]) == 5000 + 4
    finally:
        client.close()


def test_gathered_writes_keep_every_byte_in_order_when_the_kernel_splits_them() -> None:
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # writev returns short often
    pieces: list[bytes | memoryview] = []
    for i in range(2000):
        line = b"%d:" % i + bytes([97 + i % 26]) * (i % 700) + b"\n"
        pieces += [memoryview(line)[:3], b"", line[3:]]  # a line in parts, an empty piece
    expected = b"".join(pieces)
    got = bytearray()
    reader = threading.Thread(target=lambda: got.extend(_read_all(read_end)))
    reader.start()
    write_all(write_end, pieces)
    os.close(write_end)
    reader.join(TIMEOUT)
    assert bytes(got) == expected


def _read_all(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as stream:
        return stream.read()


def test_a_producer_writes_itself_into_a_pipe_with_room() -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "wb", buffering=0) as out, os.fdopen(read_end, "rb") as inp:
        writer = LineWriter(out)  # its thread never started: nothing could write but the caller
        writer.put_many([b"one\n", memoryview(b"two\n")])
        assert select.select([inp], [], [], 1)[0], "nothing written"
        assert inp.read1(100) == b"one\ntwo\n"


def _voluntary_switches(thread: threading.Thread) -> int:
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return int(status.split("voluntary_ctxt_switches:")[1].split()[0])


def test_a_producer_writing_itself_does_not_wake_the_writer_thread() -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "wb", buffering=0) as out, os.fdopen(read_end, "rb") as inp:
        writer = LineWriter(out)
        writer.start()
        thread = writer._thread  # noqa: SLF001 - its wake-ups are what this test counts
        time.sleep(0.05)  # let it reach its wait
        before = _voluntary_switches(thread)
        for i in range(200):
            writer.put_many([b"line %d\n" % i])
            inp.read1(100)  # the pipe keeps room: every batch is the producer's own write
        woken = _voluntary_switches(thread) - before
        writer.close(TIMEOUT)
    # A wake-up per batch (it had nothing to do) cost serve a context switch and a hand-over
    # of the interpreter lock per read of a stream.
    assert woken < 20


def test_a_producer_never_waits_on_a_full_pipe_and_order_holds() -> None:
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    with os.fdopen(write_end, "wb", buffering=0) as out, os.fdopen(read_end, "rb") as inp:
        writer = LineWriter(out)
        writer.start()
        lines = [b"%05d" % i + b"x" * 1000 + b"\n" for i in range(40)]  # ten times the pipe
        done = threading.Event()

        def produce() -> None:
            for line in lines:
                writer.put_many([line])
            done.set()

        threading.Thread(target=produce, daemon=True).start()
        assert done.wait(TIMEOUT)  # nobody reads yet: it all waits in the writer's buffer
        got = b""
        while len(got) < sum(map(len, lines)):
            got += inp.read1(65536)
        assert got == b"".join(lines)
        writer.close(TIMEOUT)


def test_writer_drops_after_the_stream_breaks_and_reports_it() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    broken = threading.Event()
    with os.fdopen(write_end, "wb", buffering=0) as out:
        writer = LineWriter(out, max_bytes=10, on_broken=broken.set)
        writer.start()
        writer.put(b"x" * 100 + b"\n")
        assert broken.wait(TIMEOUT)
        for _ in range(100):
            writer.put(b"y" * 100 + b"\n")  # never blocks once broken
        writer.close(1)


# --- stopping ---------------------------------------------------------------------------------


def test_eof_cancels_running_and_queued_runs_answers_all_and_returns_0(
    backend: FakeBackend,
) -> None:
    client = Client(backend, max_concurrent=1)
    try:
        client.call("run", run_params("block"), id_=1)
        client.call("run", run_params("block"), id_=2)
        wait_for(lambda: len(backend.started) == 1)
        client.close_stdin()
        answers = {k: m["result"]["status"] for k, m in client.responses(2).items()}
        assert answers == {1: "interrupted", 2: "interrupted"}
        assert client.wait_stopped() == 0
        assert len(backend.started) == 1
    finally:
        client.close()


def test_client_that_stops_reading_cannot_keep_runs_alive_at_shutdown(
    backend: FakeBackend,
) -> None:
    client = Client(backend, read=False, write_buffer_bytes=16 * 1024, shutdown_grace_s=0.5)
    try:
        client.call("run", run_params("flood", count=100_000), id_=1)
        wait_for(lambda: backend.produced > 0)
        client.close_stdin()
        assert client.wait_stopped() == 0
        assert backend.active == 0  # the run ended: its container would be removed
        assert backend.produced < 100_000
    finally:
        client.close()


def test_shutdown_cancels_runs_and_is_answered_last(client: Client) -> None:
    client.call("run", run_params("block"), id_=1)
    wait_for(lambda: len(client.backend.started) == 1)
    client.call("shutdown", id_="s")
    before, answer = client.until_response("s")
    assert answer["result"] == {}
    assert [m["result"]["status"] for m in before if "result" in m] == ["interrupted"]
    assert client.wait_stopped() == 0


def test_a_health_call_in_flight_is_answered_before_the_shutdown(backend: FakeBackend) -> None:
    # The server once exited (or answered `shutdown`) before a slow health answer was sent.
    client = Client(backend)
    asked = threading.Event()
    slow = client._engine_info

    def slow_engine() -> EngineInfo:
        asked.set()
        time.sleep(0.5)
        return slow()

    client.server._engine_info = slow_engine
    client.call("health", id_="h")
    assert asked.wait(TIMEOUT)
    client.call("shutdown", id_="s")
    answers = [client.next(), client.next()]
    assert [a["id"] for a in answers] == ["h", "s"]
    assert answers[0]["result"]["engine"]["reachable"] is True
    assert client.wait_stopped() == 0


def test_draining_shutdown_refuses_new_runs_but_finishes_the_running(client: Client) -> None:
    client.call("run", run_params("block"), id_=1)
    wait_for(lambda: len(client.backend.started) == 1)
    client.call("shutdown", {"drain": True}, id_="s")
    client.call("run", run_params(), id_=2)
    assert client.until_response(2)[1]["error"]["code"] == SHUTTING_DOWN
    client.call("health", id_="h")
    assert client.until_response("h")[1]["result"]["accepting"] is False
    client.close_stdin()  # EOF after a draining shutdown keeps draining
    time.sleep(0.3)
    client.backend.release.set()
    assert client.until_response(1)[1]["result"]["status"] == "ok"
    assert client.until_response("s")[1]["result"] == {}
    assert client.wait_stopped() == 0


def test_stop_request_escalates_a_drain_to_a_cancel(client: Client) -> None:
    client.call("run", run_params("block"), id_=1)
    wait_for(lambda: len(client.backend.started) == 1)
    client.call("shutdown", {"drain": True}, id_="s")
    time.sleep(0.3)
    client.server.request_stop(cancel=True, reason="signal SIGTERM")
    assert client.until_response(1)[1]["result"]["status"] == "interrupted"
    assert client.wait_stopped() == 0


# --- pure helpers -----------------------------------------------------------------------------


def test_read_lines_splits_chunks_and_skips_overlong_lines() -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "wb") as out:
        out.write(b"ab\ncd" + b"e" * 20 + b"\nf\n" + b"g" * 30 + b"\nlast")
    with os.fdopen(read_end, "rb", buffering=0) as stream:
        lines = list(read_lines(stream, max_bytes=10, chunk=4))
    assert lines == [b"ab", None, b"f", None, b"last"]


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 95) == 95.0


def test_default_concurrency_follows_cores_and_memory() -> None:
    assert default_max_concurrent(HostSnapshot(8192, 16384, 4)) == 4
    assert default_max_concurrent(HostSnapshot(1024, 2048, 8)) == 2
    assert default_max_concurrent(HostSnapshot(100, 2048, 8)) == 1
