"""``sandbox serve`` as a subprocess against the real engine and the testkit image: streaming,
concurrency, cancel, and stopping (EOF, SIGTERM, SIGHUP) with containers removed."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ROOT, PolicyDir, containers_for_run

pytestmark = pytest.mark.docker
TIMEOUT = 60.0


class ServeProcess:
    """``python -m sandbox serve`` with a thread collecting its stdout messages."""

    def __init__(self, policies: PolicyDir, *args: str) -> None:
        argv = [sys.executable, "-m", "sandbox", "--policies", str(policies.path), "serve"]
        self.proc = subprocess.Popen(
            [*argv, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stderr = b""
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self._next_id = 0

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.messages.put(json.loads(line))

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def call(self, method: str, params: Any = None) -> int:
        self._next_id += 1
        message = {"jsonrpc": "2.0", "id": self._next_id, "method": method}
        if params is not None:
            message["params"] = params
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()
        return self._next_id

    def next(self) -> dict[str, Any]:
        return self.messages.get(timeout=TIMEOUT)

    def responses(self, ids: set[int]) -> tuple[dict[int, Any], list[dict[str, Any]]]:
        """Responses to ``ids`` and the notifications seen meanwhile."""
        found: dict[int, Any] = {}
        notes = []
        while set(found) != ids:
            message = self.next()
            if "method" in message:
                notes.append(message)
            elif message["id"] in ids:
                found[message["id"]] = message
        return found, notes

    def started(self) -> tuple[str, str]:
        """Wait for a run's ``started`` event: (run_id, container_id)."""
        while True:
            message = self.next()
            if message.get("method") == "event" and message["params"]["type"] == "started":
                return message["params"]["run_id"], message["params"]["container_id"]

    def close(self) -> int:
        assert self.proc.stdin is not None
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        return self.proc.wait(TIMEOUT)

    def dispose(self) -> None:
        """Kill the server if a test left it running, and close its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def serve(testkit_policies: PolicyDir) -> Iterator[ServeProcess]:
    server = ServeProcess(testkit_policies, "--max-concurrent", "2")
    yield server
    server.dispose()


def test_concurrent_runs_stream_events_and_answer_with_exit_frames(serve: ServeProcess) -> None:
    ids = {serve.call("run", {"tool": "testkit", "args": {"case": "frames"}}) for _ in range(4)}
    answers, notes = serve.responses(ids)
    assigned = {
        n["params"]["id"]: n["params"]["run_id"] for n in notes if n["method"] == "run.assigned"
    }
    assert set(assigned) == ids
    for rpc_id, answer in answers.items():
        exit_frame = answer["result"]
        assert exit_frame["status"] == "ok"
        assert exit_frame["run_id"] == assigned[rpc_id]
        events = [n["params"] for n in notes if n["method"] == "event"]
        mine = [f for f in events if f["run_id"] == assigned[rpc_id]]
        assert mine[0]["type"] == "accepted"
        assert mine[-1] == exit_frame
        assert [f["seq"] for f in mine] == list(range(len(mine)))
    metrics_id = serve.call("metrics")
    metrics = serve.responses({metrics_id})[0][metrics_id]["result"]
    assert metrics["runs"]["ok"] == 4
    assert metrics["tools"]["testkit"]["start_latency_s"]["count"] == 4
    assert serve.close() == 0


def test_cancel_kills_and_removes_the_container(serve: ServeProcess, docker_client: Any) -> None:
    rpc_id = serve.call("run", {"tool": "testkit", "args": {"case": "sleep", "seconds": 60}})
    run_id, _ = serve.started()
    cancel_id = serve.call("cancel", {"run_id": run_id})
    answers, _ = serve.responses({rpc_id, cancel_id})
    assert answers[cancel_id]["result"] == {"run_id": run_id, "was": "running"}
    exit_frame = answers[rpc_id]["result"]
    assert exit_frame["status"] == "interrupted"
    assert exit_frame["duration_s"] < 20
    assert containers_for_run(docker_client, run_id) == []


@pytest.mark.parametrize("stop", ["eof", "sigterm", "sighup"])
def test_eof_or_sigterm_stops_containers_answers_pending_and_exits_0(
    serve: ServeProcess, docker_client: Any, stop: str
) -> None:
    # SIGHUP (a closed terminal) once killed the server outright: no answer, and its running
    # containers were left behind (`sandbox run` already treated it like SIGTERM).
    rpc_id = serve.call("run", {"tool": "testkit", "args": {"case": "sleep", "seconds": 60}})
    run_id, _ = serve.started()
    if stop == "eof":
        assert serve.proc.stdin is not None
        serve.proc.stdin.close()
    else:
        serve.proc.send_signal(signal.SIGTERM if stop == "sigterm" else signal.SIGHUP)
    answers, _ = serve.responses({rpc_id})
    assert answers[rpc_id]["result"]["status"] == "interrupted"
    assert serve.proc.wait(TIMEOUT) == 0
    assert containers_for_run(docker_client, run_id) == []


def test_health_reports_the_engine(serve: ServeProcess) -> None:
    rpc_id = serve.call("health")
    health = serve.responses({rpc_id})[0][rpc_id]["result"]
    assert health["ok"] is True
    assert health["engine"]["reachable"] is True
    assert health["engine"]["api_version"]


def test_server_keeps_stray_output_off_the_channel(serve: ServeProcess) -> None:
    # fd 1 of the server process points at stderr; only JSON-RPC lines reach the client.
    rpc_id = serve.call("run", {"tool": "testkit", "args": {"case": "echo"}})
    answers, notes = serve.responses({rpc_id})
    assert all(n["jsonrpc"] == "2.0" for n in notes)
    assert answers[rpc_id]["result"]["status"] == "ok"


def test_a_new_server_removes_the_containers_of_a_killed_coordinator(
    testkit_policies: PolicyDir, docker_client: Any
) -> None:
    # The start-up reap runs beside the server (an engine slow to answer must not hold calls).
    argv = [sys.executable, "-m", "sandbox", "--policies", str(testkit_policies.path), "run"]
    argv += ["testkit", "--args", '{"case": "sleep", "seconds": 60}']
    victim = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    assert victim.stdout is not None
    victim_run = json.loads(victim.stdout.readline())["run_id"]
    victim.stdout.readline()  # started: its container exists
    victim.kill()
    victim.communicate(timeout=TIMEOUT)
    assert len(containers_for_run(docker_client, victim_run)) == 1

    server = ServeProcess(testkit_policies)
    try:
        found, _ = server.responses({server.call("tools")})
        assert found
        deadline = time.monotonic() + TIMEOUT
        while containers_for_run(docker_client, victim_run) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert containers_for_run(docker_client, victim_run) == []
        assert server.close() == 0
    finally:
        server.dispose()
