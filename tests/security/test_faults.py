"""Faults: a killed coordinator, a restarted or unreachable engine, transient engine errors and a
full output filesystem lose nothing, hang nothing and leave nothing running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests.exceptions

from sandbox import retry
from sandbox.docker_runtime import DockerRuntime
from sandbox.errors import InfrastructureError
from sandbox.policy import Policy
from sandbox.spec import ContainerSpec, Owner, build_spec
from tests.conftest import ROOT, PolicyDir, containers_for_run, make_policy_dir, run_cli

from .conftest import SecurityEnv, tree_digest

# --- transient engine errors (unit level: a fake docker API client) ---------------------------


class FakeAPI:
    """The slice of docker.APIClient DockerRuntime uses; each method fails as scripted."""

    api_version = "1.41"

    def __init__(self, failures: dict[str, list[Exception]]) -> None:
        self.failures = failures
        self.calls: list[str] = []

    def _call(self, name: str, result: Any) -> Any:
        self.calls.append(name)
        pending = self.failures.get(name)
        if pending:
            raise pending.pop(0)
        return result

    def create_container(self, **_kwargs: Any) -> Any:
        return self._call("create_container", {"Id": "c1"})

    def inspect_container(self, _cid: str) -> Any:
        return self._call("inspect_container", {"State": {"ExitCode": 0, "OOMKilled": False}})

    def remove_container(self, _cid: str, **_kwargs: Any) -> Any:
        return self._call("remove_container", None)

    def containers(self, **_kwargs: Any) -> Any:
        return self._call("containers", [])

    def inspect_image(self, _name: str) -> Any:
        return self._call("inspect_image", {"Id": "sha256:" + "a" * 64})

    def start(self, _cid: str) -> Any:
        return self._call("start", None)

    def attach_socket(self, _cid: str, **_kwargs: Any) -> Any:
        return self._call("attach_socket", None)


class FakeClient:
    def __init__(self, api: FakeAPI) -> None:
        self.api = api


def _spec() -> ContainerSpec:
    policy = Policy.model_validate(
        {
            "version": 1,
            "tool": "echo",
            "image": {"name": "sandbox/testkit", "id": "sha256:" + "a" * 64},
            "command": ["python3", "/opt/testkit/main.py"],
        }
    )
    return build_spec(
        policy,
        run_id="r1",
        policy_sha256="0" * 64,
        inputs={},
        staging_dir=None,
        timeout_s=5,
        owner=Owner(pid=1, start_time=1.0, host="h"),
        deadline=0.0,
    )


def _conn_error() -> Exception:
    return requests.exceptions.ConnectionError("connection reset by peer")


def _server_error() -> Exception:
    return docker.errors.APIError("boom", response=_Response(500))  # type: ignore[arg-type]


class _Response:
    def __init__(self, status: int) -> None:
        self.status_code = status
        self.reason = "error"
        self.url = "http://docker/x"

    def json(self) -> Any:
        return {"message": "engine hiccup"}


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record tenacity's back-off sleeps instead of sleeping."""
    recorded: list[float] = []
    monkeypatch.setattr("tenacity.nap.time.sleep", recorded.append)
    return recorded


@pytest.mark.parametrize(
    ("method", "call", "error"),
    [
        ("create_container", lambda rt: rt.create(_spec()), _conn_error),
        (
            "inspect_image",
            lambda rt: rt.check_image("sandbox/testkit", "sha256:" + "a" * 64),
            _server_error,
        ),
        ("remove_container", lambda rt: rt.remove("c1"), _conn_error),
        ("containers", lambda rt: rt.list_managed(), _server_error),
    ],
)
def test_transient_errors_on_idempotent_calls_are_retried(
    method: str, call: Any, error: Any, sleeps: list[float]
) -> None:
    api = FakeAPI({method: [error(), error()]})
    call(DockerRuntime(client=FakeClient(api)))  # type: ignore[arg-type]
    assert api.calls.count(method) == 3
    assert len(sleeps) == 2
    assert all(0 <= s <= 2.0 for s in sleeps)  # jittered exponential back-off, capped


def test_retries_are_bounded_then_the_error_surfaces(sleeps: list[float]) -> None:
    api = FakeAPI({"remove_container": [_conn_error() for _ in range(10)]})
    with pytest.raises(InfrastructureError):
        DockerRuntime(client=FakeClient(api)).remove("c1")  # type: ignore[arg-type]
    assert api.calls.count("remove_container") == retry.ATTEMPTS
    assert len(sleeps) == retry.ATTEMPTS - 1


def test_retries_are_jittered(sleeps: list[float]) -> None:
    for _ in range(5):
        api = FakeAPI({"containers": [_conn_error()]})
        DockerRuntime(client=FakeClient(api)).list_managed()  # type: ignore[arg-type]
    assert len(set(sleeps)) > 1


def test_client_errors_are_not_retried(sleeps: list[float]) -> None:
    refused = docker.errors.APIError("nope", response=_Response(400))  # type: ignore[arg-type]
    api = FakeAPI({"inspect_image": [refused]})
    with pytest.raises(InfrastructureError):
        DockerRuntime(client=FakeClient(api)).check_image("x", "sha256:" + "a" * 64)  # type: ignore[arg-type]
    assert api.calls == ["inspect_image"]
    assert sleeps == []


@pytest.mark.parametrize(
    ("method", "call"),
    [("start", lambda rt: rt.start("c1")), ("attach_socket", lambda rt: rt.attach("c1"))],
)
def test_start_and_attach_are_never_retried(method: str, call: Any, sleeps: list[float]) -> None:
    api = FakeAPI({method: [_conn_error()]})
    with pytest.raises(InfrastructureError):
        call(DockerRuntime(client=FakeClient(api)))  # type: ignore[arg-type]
    assert api.calls == [method]
    assert sleeps == []


def test_retries_are_logged(sleeps: list[float]) -> None:
    from loguru import logger

    messages: list[str] = []
    logger.enable("sandbox")
    sink = logger.add(messages.append, level="WARNING", format="{message}")
    try:
        api = FakeAPI({"containers": [_conn_error()]})
        DockerRuntime(client=FakeClient(api)).list_managed()  # type: ignore[arg-type]
    finally:
        logger.remove(sink)
        logger.disable("sandbox")
    assert any("list containers" in m and "retrying" in m for m in messages)


# --- the real engine --------------------------------------------------------------------------


@pytest.fixture
def fault_policies(docker_client: Any, tmp_path: Path, data_root: Path) -> PolicyDir:
    pdir = make_policy_dir(docker_client, tmp_path, ["testkit"], roots=[data_root])
    pdir.update("testkit", limits={"timeout_s": 30, "memory_mb": 128, "tmpfs_mb": 16})
    return pdir


def _start(
    policies: Path, args: dict[str, Any], *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "sandbox", "--policies", str(policies), "run", "testkit"]
        + ["--args", json.dumps(args), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def _started(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stdout is not None
    accepted = json.loads(proc.stdout.readline())
    assert json.loads(proc.stdout.readline())["type"] == "started"
    return str(accepted["run_id"])


def _wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.docker
def test_sigkilled_coordinator_container_ends_at_its_deadline_and_is_reaped(
    security_env: SecurityEnv, docker_client: Any
) -> None:
    # The suite's own runs reap dead owners' containers too; let them finish first so the
    # orphan is observed by this test (another process may still reap it: that is allowed).
    security_env.wait_idle()
    policies = security_env.policy_dir("default")
    victim = _start(policies, {"case": "sleep", "seconds": 600}, "--timeout", "2")
    survivor = _start(policies, {"case": "sleep", "seconds": 600}, "--timeout", "20")
    try:
        victim_run = _started(victim)
        survivor_run = _started(survivor)
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=10)
        killed_at = time.monotonic()

        # Nobody is left to kill it: the in-container `timeout -s KILL` (2 s + 5 s grace) must.
        def orphan_ended() -> bool:
            found = containers_for_run(docker_client, victim_run)
            if not found:
                return True  # reaped by a concurrent `sandbox run`: also a correct ending
            found[0].reload()
            return bool(found[0].status == "exited")

        assert _wait_for(orphan_ended, 30), "the orphan container outlived its deadline"
        assert time.monotonic() - killed_at < 20
        for container in containers_for_run(docker_client, victim_run):
            container.reload()  # the listing is sparse; the exit code needs the full inspect
            assert container.attrs["State"]["ExitCode"] == 137
        reaped = run_cli(["reap"], policies=policies)
        assert reaped.returncode == 0
        assert containers_for_run(docker_client, victim_run) == []
        # The live coordinator's container is untouched and still running.
        (alive,) = containers_for_run(docker_client, survivor_run)
        alive.reload()
        assert alive.status == "running"
    finally:
        survivor.send_signal(signal.SIGTERM)
        survivor.communicate(timeout=30)
        if victim.returncode is None:
            victim.kill()
            victim.communicate(timeout=10)
    assert survivor.returncode == 130
    assert containers_for_run(docker_client, survivor_run) == []


@pytest.mark.docker
def test_engine_unreachable_at_start_exits_6_with_the_fix(
    fault_policies: PolicyDir, tmp_path: Path
) -> None:
    dead = tmp_path / "dead" / "docker.sock"
    dead.parent.mkdir()
    result = run_cli(
        ["run", "testkit", "--args", '{"case": "echo"}'],
        policies=fault_policies.path,
        env={"DOCKER_HOST": f"unix://{dead}"},
        timeout=60,
    )
    assert result.returncode == 6
    assert result.exit["status"] == "infrastructure_error"
    (error,) = result.errors
    assert error["kind"] == "InfrastructureError"
    assert "engine.sh" in error["details"]["fix"]


@pytest.fixture
def full_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1.5 MiB tmpfs (root only, as in CI): the output directory's filesystem, nearly full."""
    mount = tmp_path / "full"
    mount.mkdir()
    subprocess.run(  # noqa: S603, S607 - fixed command
        ["mount", "-t", "tmpfs", "-o", "size=1536k", "sandbox-full", str(mount)], check=True
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)  # noqa: S603, S607


@pytest.mark.docker
@pytest.mark.parametrize(
    ("mb", "status", "code"),
    [
        # The script's own writes hit ENOSPC: it fails, nothing is published.
        (3, "tool_error", 1),
        # The script fits, but publishing (a copy) does not: refused, nothing half-published.
        (1, "infrastructure_error", 6),
    ],
    ids=["script-write-fails", "publish-fails"],
)
def test_output_on_a_full_filesystem_fails_cleanly_with_inputs_untouched(
    fault_policies: PolicyDir,
    docker_client: Any,
    data_root: Path,
    full_fs: Path,
    mb: int,
    status: str,
    code: int,
) -> None:
    before = tree_digest(data_root)
    out = full_fs / "out"
    result = run_cli(
        [
            "run",
            "testkit",
            "--args",
            json.dumps({"case": "fill_output", "files": 1, "mb_per_file": mb}),
        ]
        + ["--output", str(out), "--input", f"data={data_root}"],
        policies=fault_policies.path,
    )
    assert result.returncode == code, result.stderr
    assert result.exit["status"] == status
    assert not out.exists()
    assert result.exit["outputs"] == []
    assert tree_digest(data_root) == before
    # No half-made publish directory or staging tree is left behind; partial outputs are aside.
    staging = full_fs / ".sandbox-staging"
    assert not staging.exists() or list(staging.iterdir()) == []
    assert containers_for_run(docker_client, result.exit["run_id"]) == []


def _dockerd_pid() -> int | None:
    done = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True, check=False)  # noqa: S607
    pids = [int(p) for p in done.stdout.split()]
    return pids[0] if pids else None


def _gone(pid: int) -> bool:
    """The killed dockerd has left the process table. Until its parent reaps it, a zombie
    still matches `pgrep -x dockerd`, and engine.sh would wait for it instead of starting one."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "X"


def _engine_up(killed: int) -> None:
    """Start the engine again the way CI does; detached, so it outlives this test process."""
    _wait_for(lambda: _gone(killed), 60)
    for attempt in range(2):
        done = subprocess.run(  # noqa: S603 - our own script
            ["bash", str(ROOT / "scripts" / "engine.sh")],  # noqa: S607
            check=False,
            timeout=150,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode == 0:
            return
        if attempt == 0:
            _wait_for(lambda: _gone(killed), 60)
    pytest.fail("the engine did not come back: run `bash scripts/engine.sh`")


@pytest.fixture
def restart_policies(tmp_path: Path, data_root: Path) -> PolicyDir:
    # A private client, closed before the restart: a pooled connection cut by the engine's
    # death would otherwise surface later as an unclosed-socket warning.
    client = docker.from_env(version="auto")
    try:
        return make_policy_dir(client, tmp_path, ["testkit"], roots=[data_root])
    finally:
        client.close()


@pytest.mark.docker
def test_engine_restart_mid_run_ends_infrastructure_error_promptly(
    restart_policies: PolicyDir,
) -> None:
    pid = _dockerd_pid()
    if pid is None:
        pytest.fail("this test restarts a local dockerd (scripts/engine.sh); none is running")
    proc = _start(restart_policies.path, {"case": "sleep", "seconds": 600}, "--timeout", "25")
    try:
        assert proc.stdout is not None
        run_id = json.loads(proc.stdout.readline())["run_id"]
        assert json.loads(proc.stdout.readline())["type"] == "started"
        began = time.monotonic()
        os.kill(pid, signal.SIGKILL)  # a crash, not a clean stop: the worst case
        out, _ = proc.communicate(timeout=60)
        elapsed = time.monotonic() - began
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.communicate(timeout=10)
        _engine_up(pid)
    frames = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert proc.returncode == 6
    assert frames[-1]["type"] == "exit"
    assert frames[-1]["status"] == "infrastructure_error"
    assert elapsed < 30, "the run hung after the engine went away"
    # Once the engine is back, the container (if the engine kept it) is removed by reap.
    assert run_cli(["reap"], policies=restart_policies.path).returncode == 0
    client = docker.from_env(version="auto")
    try:
        assert containers_for_run(client, run_id) == []
    finally:
        client.close()
