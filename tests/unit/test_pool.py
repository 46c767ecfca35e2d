"""The warm pool over the fake runtime: one use per container, only requests without mounts,
the request's deadline still enforced, nothing left behind."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.coordinator import Coordinator
from sandbox.fake_runtime import FakeContainer, FakeRuntime
from sandbox.pool import BackgroundRemover, StartGate, WarmPool, pool_key
from sandbox.request import Request
from sandbox.spec import LABEL_OWNER_PID, LABEL_POOL, Owner

from .conftest import FakeClock

OWNER = Owner(pid=4242, start_time=1.0, host="test-host")


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


@pytest.fixture
def pooled(
    runtime: FakeRuntime, policy_dir: Path, clock: FakeClock, write_policy: Callable[..., Path]
) -> Iterator[tuple[Coordinator, WarmPool, BackgroundRemover]]:
    write_policy(pool={"warm": 2}, inputs={"allowed_roots": [str(policy_dir)], "max": 2})
    gate = StartGate()
    remover = BackgroundRemover(runtime, gate=gate, retry_delay_s=0.0)
    pool = WarmPool(runtime, owner=OWNER, remover=remover, gate=gate, max_total=3)
    coordinator = Coordinator(
        runtime=runtime,
        policy_dir=policy_dir,
        clock=clock,
        owner=OWNER,
        poll_s=0.005,
        output_poll_s=0.005,
        admission=lambda _mb: None,
        pool=pool,
        remover=remover,
        start_gate=gate,
    )
    yield coordinator, pool, remover
    pool.close()
    remover.close(5)


def _warm(coordinator: Coordinator, pool: WarmPool, count: int = 2) -> tuple[str, str, str]:
    loaded = coordinator.policies.find(coordinator.policy_dir, "echo")
    pool.want(loaded)
    key = pool_key(loaded)
    wait_for(lambda: pool.idle_count(key) == count)
    return key


def _run(coordinator: Coordinator, **request: Any) -> list[dict[str, Any]]:
    return list(coordinator.run(Request(**{"tool": "echo", **request}), run_id="r"))


def test_a_request_without_mounts_takes_a_precreated_container_once(
    pooled: tuple[Coordinator, WarmPool, BackgroundRemover], runtime: FakeRuntime
) -> None:
    coordinator, pool, remover = pooled
    _warm(coordinator, pool)
    frames = _run(coordinator)
    assert frames[-1]["status"] == "ok"
    used = frames[1]["container_id"]
    assert used in ("fake-0", "fake-1")
    assert ("start", used) in runtime.calls
    # Its creation happened before the run: the run itself created nothing.
    assert runtime.calls.count(("create", runtime.specs[int(used[5:])].name)) == 1
    second = _run(coordinator)
    assert second[1]["container_id"] != used  # never handed out twice
    wait_for(lambda: remover.pending == 0)
    assert used not in runtime.live
    assert [c for c, cid in runtime.calls if c == "start" and cid == used] == ["start"]


def test_pool_refills_in_the_background_up_to_warm(
    pooled: tuple[Coordinator, WarmPool, BackgroundRemover],
) -> None:
    coordinator, pool, _ = pooled
    key = _warm(coordinator, pool)
    _run(coordinator)
    wait_for(lambda: pool.idle_count(key) == 2)


def test_requests_with_inputs_or_an_output_never_get_a_pooled_container(
    pooled: tuple[Coordinator, WarmPool, BackgroundRemover],
    runtime: FakeRuntime,
    policy_dir: Path,
    tmp_path: Path,
) -> None:
    coordinator, pool, _ = pooled
    _warm(coordinator, pool)
    pooled_ids = {"fake-0", "fake-1"}
    with_input = _run(coordinator, inputs={"data": str(policy_dir / "echo.yaml")})
    assert with_input[-1]["status"] == "ok"
    assert with_input[1]["container_id"] not in pooled_ids
    spec = next(s for s in runtime.specs if s.mounts)
    assert [m.target for m in spec.mounts] == ["/inputs/data"]
    with_output = _run(coordinator, output_dir=str(tmp_path / "out"))
    assert with_output[-1]["status"] == "ok"
    assert with_output[1]["container_id"] not in pooled_ids
    assert any(m.target == "/output" for s in runtime.specs for m in s.mounts)
    # The pooled containers themselves have no mounts at all.
    assert runtime.specs[0].mounts == ()
    assert runtime.specs[1].mounts == ()


def test_a_pooled_run_still_times_out_at_the_requests_lower_deadline(
    pooled: tuple[Coordinator, WarmPool, BackgroundRemover],
    runtime: FakeRuntime,
    clock: FakeClock,
) -> None:
    coordinator, pool, remover = pooled
    runtime.scripts += [FakeContainer(block_until_killed=True), FakeContainer()]
    _warm(coordinator, pool)
    frames_iter = coordinator.run(Request(tool="echo", timeout_s=2), run_id="t")
    accepted, started = next(frames_iter), next(frames_iter)
    assert accepted["limits"]["timeout_s"] == 2
    assert started["container_id"] == "fake-0"
    # The container's own deadline is the policy's (10 s + grace), baked in at create.
    command = runtime.specs[0].command
    assert command[command.index("KILL") + 1] == "15s"
    clock.advance(2.5)
    rest = list(frames_iter)
    assert rest[-1]["status"] == "timeout"
    assert ("kill", "fake-0") in runtime.calls
    wait_for(lambda: remover.pending == 0)
    assert "fake-0" not in runtime.live


def test_pooled_containers_carry_the_owner_labels_for_the_reaper(
    pooled: tuple[Coordinator, WarmPool, BackgroundRemover], runtime: FakeRuntime
) -> None:
    coordinator, pool, _ = pooled
    _warm(coordinator, pool)
    for container in runtime.live.values():
        assert container.labels[LABEL_OWNER_PID] == "4242"
        assert container.labels["io.sandbox.managed"] == "1"


def test_close_removes_every_idle_container(
    pooled: tuple[Coordinator, WarmPool, BackgroundRemover], runtime: FakeRuntime
) -> None:
    coordinator, pool, remover = pooled
    _warm(coordinator, pool)
    _run(coordinator)
    pool.close()
    assert remover.close(5)
    assert runtime.live == {}


def test_an_edited_policy_drops_the_containers_of_its_old_version(
    pooled: tuple[Coordinator, WarmPool, BackgroundRemover],
    runtime: FakeRuntime,
    write_policy: Callable[..., Path],
    policy_dir: Path,
) -> None:
    coordinator, pool, remover = pooled
    old_key = _warm(coordinator, pool)
    old_ids = set(runtime.live)
    write_policy(pool={"warm": 2}, description="edited", inputs={"allowed_roots": [], "max": 0})
    frames = _run(coordinator)
    assert frames[0]["policy_sha256"] != old_key[1]
    assert frames[1]["container_id"] not in old_ids  # never a container of the old policy
    wait_for(lambda: remover.pending == 0 and not old_ids & set(runtime.live))
    assert pool.idle_count(old_key) == 0


@contextlib.contextmanager
def greedy_pool(
    runtime: FakeRuntime, policy_dir: Path, write_policy: Callable[..., Path]
) -> Iterator[WarmPool]:
    """A policy asking for 16 warm containers, a pool capped at 3, warming it."""
    write_policy(pool={"warm": 16})
    remover = BackgroundRemover(runtime)
    pool = WarmPool(runtime, owner=OWNER, remover=remover, max_total=3)
    coordinator = Coordinator(
        runtime=runtime, policy_dir=policy_dir, owner=OWNER, admission=lambda _mb: None
    )
    pool.want(coordinator.policies.find(policy_dir, "echo"))
    try:
        yield pool
    finally:
        pool.close()
        remover.close(5)


def test_the_host_wide_cap_bounds_the_pool(
    runtime: FakeRuntime, policy_dir: Path, write_policy: Callable[..., Path]
) -> None:
    with greedy_pool(runtime, policy_dir, write_policy) as pool:
        wait_for(lambda: pool.idle_count() == 3)
        time.sleep(0.05)
        assert len(runtime.live) == 3
    assert runtime.live == {}


def test_the_cap_counts_the_idle_pooled_containers_of_other_servers_on_the_engine(
    runtime: FakeRuntime, policy_dir: Path, write_policy: Callable[..., Path]
) -> None:
    others = {LABEL_POOL: "1", LABEL_OWNER_PID: "999"}
    runtime.live["other-idle-1"] = _managed("other-idle-1", others)
    runtime.live["other-idle-2"] = _managed("other-idle-2", others)
    runtime.live["other-claimed"] = _managed("other-claimed", others, state="running")
    runtime.live["other-run"] = _managed("other-run", {LABEL_OWNER_PID: "999"})
    with greedy_pool(runtime, policy_dir, write_policy) as pool:
        wait_for(lambda: pool.idle_count() == 1)
        time.sleep(0.05)
        assert pool.idle_count() == 1  # 2 idle elsewhere + 1 here: the host's cap of 3
        assert len(runtime.specs) == 1


def test_only_pooled_containers_carry_the_pool_label(
    pooled: tuple[Coordinator, WarmPool, BackgroundRemover], runtime: FakeRuntime
) -> None:
    coordinator, pool, _ = pooled
    _warm(coordinator, pool)
    assert all(dict(spec.labels).get(LABEL_POOL) == "1" for spec in runtime.specs)
    _run(coordinator, inputs={"d": str(coordinator.policy_dir)})  # mounts: its own container
    assert LABEL_POOL not in dict(runtime.specs[-1].labels)


def test_a_failed_removal_is_retried_by_the_remover(runtime: FakeRuntime) -> None:
    from sandbox.errors import InfrastructureError

    runtime.fail["remove"] = [InfrastructureError("engine hiccup")]
    runtime.live["c1"] = runtime.live.get("c1") or _managed("c1")
    remover = BackgroundRemover(runtime, retry_delay_s=0.0)
    remover.submit("c1")
    assert remover.close(5)
    assert [c for c, _ in runtime.calls].count("remove") == 2
    assert "c1" not in runtime.live


def _managed(
    container_id: str, labels: dict[str, str] | None = None, state: str = "created"
) -> Any:
    from sandbox.runtime import ManagedContainer

    return ManagedContainer(id=container_id, name=container_id, labels=labels or {}, state=state)
