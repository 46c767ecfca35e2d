"""The warm pool with the real engine, through ``sandbox serve``: pre-created containers are
never started before a run claims them, each serves one run, requests with mounts get their own
container with the right mounts, the request's deadline holds, and nothing is left behind."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PolicyDir
from tests.integration.test_serve import ServeProcess

pytestmark = pytest.mark.docker


def owned_by(client: Any, pid: int) -> list[Any]:
    # sparse: one list call, no inspect per container, which would race the background remover.
    label = f"io.sandbox.owner_pid={pid}"
    return list(client.containers.list(all=True, filters={"label": label}, sparse=True))


def wait_for_idle(client: Any, pid: int, count: int, timeout_s: float = 30.0) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        created = [c for c in owned_by(client, pid) if c.status == "created"]
        if len(created) >= count or time.monotonic() > deadline:
            for container in created:
                container.reload()  # the full inspect, while idle containers stay put
            return created
        time.sleep(0.1)


@pytest.fixture
def pooled_serve(testkit_policies: PolicyDir) -> Iterator[ServeProcess]:
    testkit_policies.update("testkit", pool={"warm": 2})
    server = ServeProcess(testkit_policies, "--max-concurrent", "2")
    yield server
    server.dispose()


def run(server: ServeProcess, params: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    rpc_id = server.call("run", {"tool": "testkit", **params})
    answers, notes = server.responses({rpc_id})
    events = [n["params"] for n in notes if n["method"] == "event"]
    return answers[rpc_id]["result"], events


def test_pooled_containers_wait_unstarted_and_serve_one_run_each(
    pooled_serve: ServeProcess, docker_client: Any
) -> None:
    pid = pooled_serve.proc.pid
    idle = wait_for_idle(docker_client, pid, 2)
    assert len(idle) == 2
    idle_ids = {c.id for c in idle}
    used = []
    for _ in range(3):
        exit_frame, events = run(pooled_serve, {"args": {"case": "echo"}})
        assert exit_frame["status"] == "ok"
        used.append(next(e for e in events if e["type"] == "started")["container_id"])
    assert len(set(used)) == 3  # exactly once each
    assert used[0] in idle_ids
    for container in idle:  # as listed before use: the full inspect
        assert container.attrs["HostConfig"]["NetworkMode"] == "none"
        assert container.attrs["Config"]["NetworkDisabled"] is True
        assert not container.attrs["HostConfig"].get("Mounts")
        assert not container.attrs.get("Mounts")
        assert container.attrs["Config"]["Labels"]["io.sandbox.pool"] == "1"  # the host's count
    # Used containers are gone (removed in the background); the pool is full again.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        live = {c.id for c in owned_by(docker_client, pid)}
        if not live & set(used) and len(live) == 2:
            break
        time.sleep(0.1)
    assert not live & set(used)
    assert len(live) == 2
    assert pooled_serve.close() == 0
    assert owned_by(docker_client, pid) == []


def test_requests_with_mounts_get_their_own_correct_container(
    pooled_serve: ServeProcess, docker_client: Any, data_root: Path, tmp_path: Path
) -> None:
    pid = pooled_serve.proc.pid
    idle_ids = {c.id for c in wait_for_idle(docker_client, pid, 2)}
    exit_frame, events = run(
        pooled_serve,
        {"args": {"case": "echo"}, "inputs": {"data": str(data_root)}},
    )
    assert exit_frame["status"] == "ok"
    assert next(e for e in events if e["type"] == "started")["container_id"] not in idle_ids
    result = next(e for e in events if e["type"] == "result")["payload"]
    assert result["inputs"]["data"] == ["sample.csv", "sub"]
    out = tmp_path / "out"
    exit_frame, events = run(
        pooled_serve, {"args": {"case": "write_outputs", "hostile": False}, "output_dir": str(out)}
    )
    assert exit_frame["status"] == "ok"
    assert next(e for e in events if e["type"] == "started")["container_id"] not in idle_ids
    assert (out / "report.txt").read_text() == "hello\n"
    # A request without an output directory sees none, pooled or not.
    exit_frame, events = run(pooled_serve, {"args": {"case": "echo"}})
    assert next(e for e in events if e["type"] == "result")["payload"]["output_dir"] is None
    assert pooled_serve.close() == 0
    assert owned_by(docker_client, pid) == []


def test_a_pooled_run_times_out_at_the_requests_deadline(
    pooled_serve: ServeProcess, docker_client: Any
) -> None:
    pid = pooled_serve.proc.pid
    idle_ids = {c.id for c in wait_for_idle(docker_client, pid, 2)}
    began = time.monotonic()
    exit_frame, events = run(
        pooled_serve, {"args": {"case": "sleep", "seconds": 60}, "timeout_s": 1}
    )
    assert exit_frame["status"] == "timeout"
    assert time.monotonic() - began < 15
    assert next(e for e in events if e["type"] == "started")["container_id"] in idle_ids
    assert pooled_serve.close() == 0
    assert owned_by(docker_client, pid) == []


def test_a_pooled_container_has_only_loopback(
    pooled_serve: ServeProcess, docker_client: Any
) -> None:
    idle_ids = {c.id for c in wait_for_idle(docker_client, pooled_serve.proc.pid, 2)}
    exit_frame, events = run(pooled_serve, {"args": {"case": "network"}})
    assert next(e for e in events if e["type"] == "started")["container_id"] in idle_ids
    assert exit_frame["status"] == "ok"
    result = next(e for e in events if e["type"] == "result")["payload"]
    assert result["interfaces"] == ["lo"]
    assert pooled_serve.close() == 0


def test_a_second_server_counts_the_first_ones_idle_containers_against_the_cap(
    testkit_policies: PolicyDir, docker_client: Any
) -> None:
    testkit_policies.update("testkit", pool={"warm": 2})
    servers = [ServeProcess(testkit_policies, "--pool-max", "3")]
    try:
        first = servers[0].proc.pid
        assert len(wait_for_idle(docker_client, first, 2)) == 2
        servers.append(ServeProcess(testkit_policies, "--pool-max", "3"))  # wants 2 as well
        second = servers[1].proc.pid
        assert len(wait_for_idle(docker_client, second, 1)) == 1
        time.sleep(1.0)  # a refill that ignored the first server would have made a 2nd by now
        idle = [c for c in owned_by(docker_client, second) if c.status == "created"]
        assert len(idle) == 1  # 2 + 1: the host's cap of 3
        assert [server.close() for server in reversed(servers)] == [0, 0]
    finally:
        for server in servers:
            server.dispose()
    assert owned_by(docker_client, first) == []
    assert owned_by(docker_client, second) == []
