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
import pytest

from sandbox import retry
from sandbox.docker_runtime import DockerRuntime
from sandbox.errors import InfrastructureError
from sandbox.log import logger
from sandbox.policy import Policy
from sandbox.spec import ContainerSpec, Owner, build_spec
from tests.conftest import ROOT, PolicyDir, containers_for_run, make_policy_dir, run_cli
from tests.engine_stub import HANG_UP, EngineStub, Reply, error, upgrade
from tests.engine_stub import engine_stub as engine_stub  # the fixture

from .conftest import SecurityEnv, tree_digest

# --- transient engine errors (unit level: the real EngineClient against a scripted engine) ------

IMAGE_ID = "sha256:" + "a" * 64
# What a scripted failure looks like on the wire: a connection cut before any answer and an
# engine-side error are transient; a refused request (4xx) is not.
TRANSIENT = {"hang-up": HANG_UP, "500": error(500)}
CREATE = ("POST", "/containers/create")
INSPECT_IMAGE = ("GET", "/images/sandbox/testkit/json")
REMOVE = ("DELETE", "/containers/c1")
LIST = ("GET", "/containers/json")
START = ("POST", "/containers/c1/start")
ATTACH = ("POST", "/containers/c1/attach")


@pytest.fixture
def engine(engine_stub: EngineStub) -> EngineStub:
    """The stub engine with every endpoint the tests call answering as a healthy engine."""
    engine_stub.route(*CREATE, Reply(201, {"Id": "c1", "Warnings": []}))
    engine_stub.route(*INSPECT_IMAGE, Reply(200, {"Id": IMAGE_ID}))
    engine_stub.route(*REMOVE, Reply(204))
    engine_stub.route(*LIST, Reply(200, []))
    engine_stub.route(*START, Reply(204))
    engine_stub.route(*ATTACH, upgrade())
    return engine_stub


def _runtime(engine: EngineStub) -> DockerRuntime:
    return DockerRuntime(client=engine.client())


def _spec() -> ContainerSpec:
    policy = Policy.model_validate(
        {
            "version": 1,
            "tool": "echo",
            "image": {"name": "sandbox/testkit", "id": IMAGE_ID},
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


def _calls(engine: EngineStub) -> dict[tuple[str, str], int]:
    """Requests per endpoint, the version handshake left out."""
    return {k: n for k, n in engine.calls.items() if k != ("GET", "/_ping")}


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record tenacity's back-off sleeps instead of sleeping."""
    recorded: list[float] = []
    monkeypatch.setattr("tenacity.nap.time.sleep", recorded.append)
    return recorded


IDEMPOTENT: list[Any] = [
    pytest.param(CREATE, lambda rt: rt.create(_spec()), id="create"),
    pytest.param(
        INSPECT_IMAGE, lambda rt: rt.check_image("sandbox/testkit", IMAGE_ID), id="inspect-image"
    ),
    pytest.param(REMOVE, lambda rt: rt.remove("c1"), id="remove"),
    pytest.param(LIST, lambda rt: rt.list_managed(), id="list"),
]


@pytest.mark.parametrize("failure", list(TRANSIENT))
@pytest.mark.parametrize(("endpoint", "call"), IDEMPOTENT)
def test_transient_errors_on_idempotent_calls_are_retried(
    engine: EngineStub,
    endpoint: tuple[str, str],
    call: Any,
    failure: str,
    sleeps: list[float],
) -> None:
    engine.script(*endpoint, TRANSIENT[failure], TRANSIENT[failure])
    call(_runtime(engine))
    assert _calls(engine) == {endpoint: 3}
    assert len(sleeps) == 2
    assert all(0 <= s <= 2.0 for s in sleeps)  # jittered exponential back-off, capped


@pytest.mark.parametrize("failure", list(TRANSIENT))
def test_retries_are_bounded_then_the_error_surfaces(
    engine: EngineStub, failure: str, sleeps: list[float]
) -> None:
    engine.script(*REMOVE, *[TRANSIENT[failure]] * 10)
    with pytest.raises(InfrastructureError) as caught:
        _runtime(engine).remove("c1")
    assert _calls(engine) == {REMOVE: retry.ATTEMPTS}
    assert len(sleeps) == retry.ATTEMPTS - 1
    if failure == "500":
        assert caught.value.details["status_code"] == 500
        assert "engine hiccup" in str(caught.value)
    else:
        assert "unreachable" in str(caught.value)


def test_retries_are_jittered(engine: EngineStub, sleeps: list[float]) -> None:
    for _ in range(5):
        engine.script(*LIST, HANG_UP)
        assert _runtime(engine).list_managed() == []
    assert _calls(engine) == {LIST: 10}
    assert len(sleeps) == 5
    assert len(set(sleeps)) > 1


def test_client_errors_are_not_retried(engine: EngineStub, sleeps: list[float]) -> None:
    engine.route("GET", "/images/x/json", error(400, "invalid reference format"))
    with pytest.raises(InfrastructureError) as caught:
        _runtime(engine).check_image("x", IMAGE_ID)
    assert caught.value.details["status_code"] == 400
    assert _calls(engine) == {("GET", "/images/x/json"): 1}
    assert sleeps == []


def test_a_runtime_the_engine_lacks_names_the_fix(engine: EngineStub) -> None:
    # The engine's own words ("Unknown runtime specified runsc") came with no fix.
    engine.route(*CREATE, error(400, "Unknown runtime specified runc"))
    with pytest.raises(InfrastructureError) as caught:
        _runtime(engine).create(_spec())
    assert "runtime 'runc' is not registered" in caught.value.message
    assert caught.value.fix is not None
    assert "/etc/docker/daemon.json" in caught.value.fix
    assert _calls(engine) == {CREATE: 1}


@pytest.mark.parametrize("failure", list(TRANSIENT))
@pytest.mark.parametrize(
    ("endpoint", "call"),
    [
        pytest.param(START, lambda rt: rt.start("c1"), id="start"),
        pytest.param(ATTACH, lambda rt: rt.attach("c1"), id="attach"),
    ],
)
def test_start_and_attach_are_never_retried(
    engine: EngineStub, endpoint: tuple[str, str], call: Any, failure: str, sleeps: list[float]
) -> None:
    engine.script(*endpoint, TRANSIENT[failure])
    with pytest.raises(InfrastructureError):
        call(_runtime(engine))
    assert _calls(engine) == {endpoint: 1}
    assert sleeps == []


def test_retries_are_logged(engine: EngineStub, sleeps: list[float]) -> None:
    from loguru import logger as real

    messages: list[str] = []
    logger.enable("WARNING")
    sink = real.add(messages.append, level="WARNING", format="{message}")
    try:
        engine.script(*LIST, HANG_UP)
        _runtime(engine).list_managed()
    finally:
        real.remove(sink)
        logger.disable()
    (message,) = messages
    assert "list containers" in message
    assert f"attempt 1/{retry.ATTEMPTS}" in message
    assert "closed the connection" in message
    assert "retrying" in message


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


def _orphan_ended(docker_client: Any, run_id: str) -> bool:
    """The run's container has exited, or is gone (reaped by a concurrent `sandbox run`: also a
    correct ending)."""
    found = containers_for_run(docker_client, run_id)
    if not found:
        return True
    found[0].reload()
    return bool(found[0].status == "exited")


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
        # Asleep, it writes nothing more: under runc a write to its stdout pipe with no reader
        # would end it at once (test_an_orphan_that_writes_ends_at_its_next_write).
        assert victim.stdout is not None
        assert json.loads(victim.stdout.readline())["type"] == "progress"
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=10)
        killed_at = time.monotonic()

        # Nobody is left to kill it: the in-container `timeout -s KILL` (2 s + 5 s grace) must.
        assert _wait_for(lambda: _orphan_ended(docker_client, victim_run), 30), (
            "the orphan container outlived its deadline"
        )
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


# Writes a data frame every 0.1 s for a minute.
CHATTY = (
    "import time\n"
    "for i in range(600):\n"
    '    print(\'{"type": "data", "payload": %d}\' % i, flush=True)\n'
    "    time.sleep(0.1)\n"
)


@pytest.mark.docker
def test_an_orphan_that_writes_ends_at_its_next_write(
    security_env: SecurityEnv, docker_client: Any
) -> None:
    # With its coordinator SIGKILLed nobody reads the run's stdout any more. Under runc the
    # stdout pipe then has no reader: the next write fails (EPIPE, or SIGPIPE for a tool that
    # keeps the default), and the orphan ends long before its deadline. Through the engine
    # (runsc) the engine drains it, and the in-container deadline ends it.
    security_env.wait_idle()
    policies = security_env.policy_dir("exec")
    victim = _start(policies, {"message": CHATTY}, "--timeout", "8")
    try:
        victim_run = _started(victim)
        assert victim.stdout is not None
        assert json.loads(victim.stdout.readline())["type"] == "data"
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=10)
        killed_at = time.monotonic()

        assert _wait_for(lambda: _orphan_ended(docker_client, victim_run), 30), (
            "the orphan container outlived its deadline"
        )
        ended_after = time.monotonic() - killed_at
        for container in containers_for_run(docker_client, victim_run):
            container.reload()
            code = container.attrs["State"]["ExitCode"]
            if security_env.runtime == "runc":
                assert code != 137, "ended by its deadline, not by the broken pipe"
            else:
                assert code == 137
        assert ended_after < (5 if security_env.runtime == "runc" else 20)
        assert run_cli(["reap"], policies=policies).returncode == 0
        assert containers_for_run(docker_client, victim_run) == []
    finally:
        if victim.returncode is None:
            victim.kill()
            victim.communicate(timeout=10)


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
