"""`sandbox run` against the real engine: every testkit case ends with the right status, exit
code and frames, and leaves no container behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IMAGE_ENV, ROOT, CliResult, PolicyDir, containers_for_run, run_cli

pytestmark = pytest.mark.docker

Run = Callable[..., CliResult]


@pytest.fixture(autouse=True)
def _no_container_left(docker_client: Any, request: pytest.FixtureRequest) -> Any:
    yield
    # Every run's container is gone by the time its CLI process has exited.
    run_ids = request.node.__dict__.get("sandbox_run_ids", [])
    leftovers = [rid for rid in run_ids if containers_for_run(docker_client, rid)]
    assert leftovers == []


def assert_exit(result: CliResult, status: str, code: int) -> dict[str, Any]:
    assert result.returncode == code, result.stderr
    exit_frame = result.exit
    assert exit_frame["type"] == "exit"
    assert exit_frame["status"] == status
    assert [f["type"] for f in result.frames].count("exit") == 1
    assert [f["seq"] for f in result.frames] == list(range(len(result.frames)))
    return exit_frame


def test_echo_round_trips_args_and_reads_inputs(sandbox_run: Run, data_root: Path) -> None:
    result = sandbox_run(
        {"case": "echo", "message": "hi; $(id)"},
        "--input",
        f"data={data_root}",
        "--input",
        f"csv={data_root / 'sample.csv'}",
    )
    assert_exit(result, "ok", 0)
    assert [f["type"] for f in result.frames[:2]] == ["accepted", "started"]
    assert result.result["args"] == {"case": "echo", "message": "hi; $(id)"}
    assert result.result["inputs"] == {
        "data": ["sample.csv", "sub"],
        "csv": "id,name\n1,ada\n2,grace\n",
    }
    assert result.result["output_dir"] is None
    assert containers_for_run_gone(result)


def containers_for_run_gone(result: CliResult) -> bool:
    import docker

    client = docker.from_env()
    try:
        return containers_for_run(client, result.exit["run_id"]) == []
    finally:
        client.close()


def test_frames_progress_data_result_with_tagged_values(sandbox_run: Run) -> None:
    result = sandbox_run({"case": "frames"})
    assert_exit(result, "ok", 0)
    kinds = [f["type"] for f in result.frames]
    assert kinds == ["accepted", "started", "progress", "data", "log", "progress", "result", "exit"]
    payload = result.result
    assert payload["when"] == {"$type": "datetime", "value": "2024-01-02T03:04:05+00:00"}
    assert payload["price"] == {"$type": "decimal", "value": "12.50"}
    assert payload["nan"] == {"$type": "float", "value": "NaN"}
    assert payload["blob"] == {"$type": "bytes", "base64": "AAE="}
    assert payload["text"] == "héllo ✓"
    accepted = result.frames[0]
    assert accepted["tool"] == "testkit"
    assert accepted["image_id"].startswith("sha256:")
    assert accepted["limits"]["memory_mb"] == 256


def test_raise_is_tool_error_with_traceback(sandbox_run: Run) -> None:
    result = sandbox_run({"case": "raise", "message": "kaboom"})
    assert_exit(result, "tool_error", 1)
    (error,) = result.errors
    assert error["kind"] == "ToolError"
    assert "kaboom" in error["message"]
    assert any(
        t["function"] == "inner" and t["file"] == "/opt/testkit/main.py" for t in error["traceback"]
    )


def test_nonzero_exit_without_a_frame_is_tool_error(sandbox_run: Run) -> None:
    result = sandbox_run({"case": "exit", "code": 3})
    exit_frame = assert_exit(result, "tool_error", 1)
    assert exit_frame["exit_code"] == 3
    assert result.errors[-1]["kind"] == "ToolError"


def test_sleep_past_deadline_is_timeout_on_time(sandbox_run: Run) -> None:
    began = time.monotonic()
    result = sandbox_run({"case": "sleep", "seconds": 60}, "--timeout", "2")
    elapsed = time.monotonic() - began
    exit_frame = assert_exit(result, "timeout", 4)
    assert result.errors[-1]["kind"] == "Timeout"
    assert exit_frame["exit_code"] == 137
    assert elapsed < 20  # generous: the deadline is 2 s; this only catches a hang


def test_tool_that_closes_its_streams_and_sleeps_still_times_out(sandbox_run: Run) -> None:
    result = sandbox_run({"case": "close_streams", "seconds": 60}, "--timeout", "20")
    assert_exit(result, "timeout", 4)
    assert result.errors[-1]["kind"] == "Timeout"


def test_tool_that_closes_its_streams_and_exits_is_ok(sandbox_run: Run) -> None:
    result = sandbox_run({"case": "close_streams", "seconds": 1})
    assert_exit(result, "ok", 0)


def test_memory_bomb_reports_resource_limit_and_leaves_no_container(sandbox_run: Run) -> None:
    result = sandbox_run({"case": "memory", "mb": 2000})
    exit_frame = assert_exit(result, "resource_limit", 5)
    assert exit_frame["oom_killed"] is True
    assert result.errors[-1]["kind"] == "ResourceLimit"


def test_fork_bomb_is_held_by_the_pids_limit(sandbox_run: Run) -> None:
    result = sandbox_run({"case": "forkbomb"})
    assert_exit(result, "ok", 0)
    assert result.result["children"] <= 64
    assert result.result["error"] == "Resource temporarily unavailable"


def test_fork_bomb_that_crashes_is_resource_limit(sandbox_run: Run) -> None:
    result = sandbox_run({"case": "forkbomb_crash"})
    assert_exit(result, "resource_limit", 5)
    assert result.errors[-1]["details"]["limit"] == "pids"


def test_stdout_flood_is_cut_at_the_cap_with_resource_limit(sandbox_run: Run) -> None:
    result = sandbox_run({"case": "flood", "mb": 200})
    assert_exit(result, "resource_limit", 5)
    assert "stdout" in result.errors[-1]["message"]
    assert len(result.stdout) < 80 * 1024 * 1024


def test_giant_line_is_truncated_and_the_run_goes_on(sandbox_run: Run) -> None:
    result = sandbox_run({"case": "giant_line", "mb": 3})
    assert_exit(result, "ok", 0)
    assert all(len(line) <= 1024 * 1024 for line in result.stdout.splitlines(keepends=True))
    assert result.result == {"after": "giant"}


def test_invalid_utf8_and_hostile_json_never_break_the_stream(sandbox_run: Run) -> None:
    result = sandbox_run({"case": "invalid_utf8"})
    assert_exit(result, "ok", 0)
    result.stdout.decode("utf-8")  # strict: every byte we emit is valid UTF-8
    logs = [f["line"] for f in result.of_type("log")]
    assert "bad \ufffd\ufffd bytes" in logs
    data = [f["payload"] for f in result.of_type("data")]
    assert "split ✓ char" in data
    assert result.result == {"ok": True}


def test_non_frame_prints_become_log_frames(sandbox_run: Run) -> None:
    result = sandbox_run({"case": "raw_prints"})
    assert_exit(result, "ok", 0)
    logs = [(f["stream"], f["line"]) for f in result.of_type("log")]
    assert ("stdout", "plain text on stdout") in logs
    assert result.result == {"ok": True}
    stray = sandbox_run({"case": "prints"})
    assert_exit(stray, "ok", 0)
    stray_logs = [(f["stream"], f["line"]) for f in stray.of_type("log")]
    assert ("stderr", "stray print goes to stderr") in stray_logs
    assert ("stderr", "from a child process") in stray_logs


def test_forged_exit_and_error_frames_do_not_decide_the_status(sandbox_run: Run) -> None:
    result = sandbox_run({"case": "forge_exit"})
    exit_frame = assert_exit(result, "tool_error", 1)
    assert exit_frame["exit_code"] == 5
    assert all(e["kind"] == "ToolError" for e in result.errors)


def test_outputs_are_published_and_links_and_fifos_refused(
    sandbox_run: Run, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = sandbox_run({"case": "write_outputs"}, "--output", str(out))
    exit_frame = assert_exit(result, "ok", 0)
    paths = {o["path"] for o in exit_frame["outputs"]}
    assert paths == {"data/a.csv", "report.txt", "report-hardlink.txt"}
    refused = {r["path"]: r["reason"] for r in exit_frame["refused"]}
    assert refused == {"passwd-link": "symbolic link", "pipe": "FIFO"}
    assert (out / "data" / "a.csv").read_text() == "x,y\n1,2\n"
    assert not (out / "passwd-link").exists()
    assert not (out / "passwd-link").is_symlink()
    for path in out.rglob("*"):
        assert path.stat().st_uid == os.geteuid()
        assert not path.stat().st_mode & 0o6000
    assert not (tmp_path / ".sandbox-staging").exists()


def test_failed_run_publishes_nothing_and_keeps_partial_outputs_aside(
    sandbox_run: Run, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = sandbox_run({"case": "write_outputs", "fail": True}, "--output", str(out))
    exit_frame = assert_exit(result, "tool_error", 1)
    assert not out.exists()
    assert exit_frame["outputs"] == []
    kept = Path(exit_frame["partial_outputs"])
    assert kept == tmp_path / ".sandbox-failed" / exit_frame["run_id"]
    assert (kept / "report.txt").exists()


def test_output_dir_that_is_not_empty_is_refused_untouched(
    sandbox_run: Run, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = sandbox_run({"case": "write_outputs"}, "--output", str(out))
    assert_exit(result, "invalid_request", 2)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_output_fill_is_stopped_as_resource_limit(sandbox_run: Run, tmp_path: Path) -> None:
    result = sandbox_run(
        {"case": "fill_output", "files": 50, "mb_per_file": 10}, "--output", str(tmp_path / "o")
    )
    assert_exit(result, "resource_limit", 5)
    assert not (tmp_path / "o").exists()


def test_no_network_only_loopback(sandbox_run: Run) -> None:
    result = sandbox_run({"case": "network"})
    assert_exit(result, "ok", 0)
    assert result.result["interfaces"] == ["lo"]
    assert "unreachable" in result.result["attempts"]["192.0.2.1"].lower()


def test_hardening_seen_from_inside(
    sandbox_run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = sandbox_run({"case": "whoami"}, "--output", str(tmp_path / "o"))
    assert_exit(result, "ok", 0)
    info = result.result
    assert (info["uid"], info["gid"]) == (65532, 65532)
    assert info["caps"]["CapEff"] == "0000000000000000"
    assert info["caps"]["CapBnd"] == "0000000000000000"
    assert info["caps"]["NoNewPrivs"] == "1"
    assert info["caps"]["Seccomp"] == "2"
    assert info["writable"] == {
        "/": False,
        "/etc": False,
        "/opt": False,
        "/tmp": True,
        "/output": True,
    }
    assert set(info["env"]) <= IMAGE_ENV
    assert "docker-init" in info["pid1"]


def test_host_environment_never_reaches_the_container(testkit_policies: PolicyDir) -> None:
    result = run_cli(
        ["run", "testkit", "--args", '{"case": "whoami"}'],
        policies=testkit_policies.path,
        env={
            "SECRET_TOKEN": "hunter2",
            "HTTP_PROXY": "http://127.0.0.1:9",
            "AWS_SECRET_ACCESS_KEY": "x",
        },
    )
    assert_exit(result, "ok", 0)
    env = result.result["env"]
    assert "SECRET_TOKEN" not in env
    assert "HTTP_PROXY" not in env
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert "hunter2" not in json.dumps(result.frames)


@pytest.mark.parametrize(
    ("spec", "status", "code"),
    [
        ("data=/etc", "denied", 3),
        ("data={root}/../..", "denied", 3),
        ("data={root}/missing", "invalid_request", 2),
        ("data={root}/link-out", "denied", 3),
        ("data=~", "denied", 3),
    ],
)
def test_inputs_outside_roots_or_missing_are_refused_before_any_container(
    sandbox_run: Run, data_root: Path, spec: str, status: str, code: int
) -> None:
    (data_root / "link-out").symlink_to("/etc")
    result = sandbox_run({"case": "echo"}, "--input", spec.format(root=data_root))
    assert_exit(result, status, code)
    assert [f["type"] for f in result.frames] == ["error", "exit"]


def test_bad_args_are_invalid_and_create_no_container(sandbox_run: Run) -> None:
    result = sandbox_run({"case": "echo", "nope": 1})
    assert_exit(result, "invalid_request", 2)
    assert [f["type"] for f in result.frames] == ["error", "exit"]


def test_request_on_stdin_is_what_nodejs_uses(testkit_policies: PolicyDir) -> None:
    request = {
        "tool": "testkit",
        "args": {"case": "echo"},
        "inputs": {},
        "output_dir": None,
        "timeout_s": 5,
    }
    result = run_cli(
        ["run", "--request", "-"],
        policies=testkit_policies.path,
        stdin=json.dumps(request).encode(),
    )
    assert_exit(result, "ok", 0)
    bad = run_cli(
        ["run", "--request", "-"], policies=testkit_policies.path, stdin=b'{"tool":"testkit","x":1}'
    )
    assert_exit(bad, "invalid_request", 2)


def test_image_not_matching_the_pin_is_infrastructure_error(testkit_policies: PolicyDir) -> None:
    testkit_policies.update(
        "testkit", image={"name": "sandbox/testkit", "id": "sha256:" + "0" * 64}
    )
    result = run_cli(["run", "testkit"], policies=testkit_policies.path)
    assert_exit(result, "infrastructure_error", 6)
    assert "0" * 64 in result.errors[0]["message"]


def start_sleeper(
    policies: PolicyDir, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A `sandbox run` of a 60 s sleeper, frames on a pipe, for signal and reaping tests."""
    argv = [sys.executable, "-m", "sandbox", "--policies", str(policies.path), "run", "testkit"]
    argv += ["--args", '{"case": "sleep", "seconds": 60}']
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_removes_the_container_then_exits_130(
    testkit_policies: PolicyDir, docker_client: Any, signum: int
) -> None:
    # SIGHUP (a closed terminal) once left the container running with no exit frame.
    proc = start_sleeper(testkit_policies)
    assert proc.stdout is not None
    lines = [proc.stdout.readline(), proc.stdout.readline()]
    assert json.loads(lines[1])["type"] == "started"
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=30)
    frames = [json.loads(x) for x in lines + out.splitlines() if x.strip()]
    assert proc.returncode == 130
    assert frames[-1]["status"] == "interrupted"
    assert containers_for_run(docker_client, frames[-1]["run_id"]) == []


def test_reap_removes_containers_of_a_killed_coordinator_only(
    testkit_policies: PolicyDir, docker_client: Any, tmp_path: Path
) -> None:
    env = {"TMPDIR": str(tmp_path)}  # where both make their stdout pipes
    victim = start_sleeper(testkit_policies, env)
    survivor = start_sleeper(testkit_policies, env)
    assert victim.stdout is not None
    assert survivor.stdout is not None
    victim_run = json.loads(victim.stdout.readline())["run_id"]
    victim.stdout.readline()
    survivor_run = json.loads(survivor.stdout.readline())["run_id"]
    survivor.stdout.readline()
    victim.kill()
    victim.communicate(timeout=30)
    assert len(containers_for_run(docker_client, victim_run)) == 1
    pipes = {p.name: p for p in tmp_path.glob("sandbox-pipe-*")}
    assert len(pipes) == 2
    reaped = run_cli(["reap"], policies=testkit_policies.path, env=env)
    assert reaped.returncode == 0
    assert containers_for_run(docker_client, victim_run) == []
    assert len(containers_for_run(docker_client, survivor_run)) == 1
    # The killed coordinator's stdout pipe went with its container; the live one's stays.
    [kept] = tmp_path.glob("sandbox-pipe-*")
    assert kept.name.startswith(f"sandbox-pipe-{survivor.pid}-")
    survivor.send_signal(signal.SIGTERM)
    survivor.communicate(timeout=30)
    assert containers_for_run(docker_client, survivor_run) == []
    assert list(tmp_path.glob("sandbox-pipe-*")) == []


def test_a_run_removes_containers_of_a_killed_coordinator_beside_its_own(
    testkit_policies: PolicyDir, docker_client: Any
) -> None:
    victim = start_sleeper(testkit_policies)
    assert victim.stdout is not None
    victim_run = json.loads(victim.stdout.readline())["run_id"]
    victim.stdout.readline()
    victim.kill()
    victim.communicate(timeout=30)
    assert len(containers_for_run(docker_client, victim_run)) == 1

    result = run_cli(["run", "testkit"], policies=testkit_policies.path)

    assert_exit(result, "ok", 0)
    assert containers_for_run(docker_client, victim_run) == []
    assert containers_for_run(docker_client, result.frames[-1]["run_id"]) == []


def test_stdout_comes_through_the_runs_own_pipe_which_is_gone_after(
    testkit_policies: PolicyDir, tmp_path: Path
) -> None:
    pipes = tmp_path / "pipes"  # where this run's coordinator makes its pipe (TMPDIR)
    pipes.mkdir()
    audit = tmp_path / "audit.jsonl"
    env = {"TMPDIR": str(pipes), "SANDBOX_AUDIT_LOG": str(audit)}
    args = json.dumps({"case": "frame_flood", "count": 300})  # 18 MB, 18 pipefuls
    result = run_cli(["run", "testkit", "--args", args], policies=testkit_policies.path, env=env)
    assert_exit(result, "ok", 0)
    assert [f["payload"]["i"] for f in result.of_type("data")] == list(range(300))
    assert result.result == {"count": 300}
    [record] = [json.loads(line) for line in audit.read_text().splitlines()]
    piped = [m for m in record["mounts"] if m["target"] == "/run/sandbox/stdout"]
    assert [(m["source"].startswith(f"{pipes}/sandbox-pipe-"), m["read_only"]) for m in piped] == [
        (True, True)
    ]
    assert list(pipes.iterdir()) == []
    # A run the watchdog ends removes its pipe too.
    args = json.dumps({"case": "sleep", "seconds": 30})
    flags = ["--timeout", "1"]
    ended = run_cli(
        ["run", "testkit", "--args", args, *flags], policies=testkit_policies.path, env=env
    )
    assert_exit(ended, "timeout", 4)
    assert list(pipes.iterdir()) == []


def test_the_engine_says_which_images_take_a_stdout_pipe(docker_client: Any) -> None:
    from sandbox.docker_runtime import DockerRuntime

    runtime = DockerRuntime()
    testkit = docker_client.images.get("sandbox/testkit:latest").id
    runtime.check_image("sandbox/testkit:latest", testkit)
    assert runtime.takes_stdout_pipe(testkit, "runc")
    assert not runtime.takes_stdout_pipe(testkit, "runsc")  # gVisor cannot mount a named pipe
    # An image without the label (the root file system every image starts from) does not.
    rootfs = docker_client.images.get("sandbox/debian-rootfs:bookworm").id
    runtime.check_image("sandbox/debian-rootfs:bookworm", rootfs)
    assert not runtime.takes_stdout_pipe(rootfs, "runc")


def test_a_stdout_pipe_the_engine_cannot_see_names_tmpdir_as_the_fix(
    docker_client: Any, tmp_path: Path
) -> None:
    # What a coordinator with a private /tmp (systemd's PrivateTmp) meets: the engine resolves
    # the pipe's path in its own view of the filesystem and finds nothing there.
    from sandbox.docker_runtime import DockerRuntime
    from sandbox.errors import InfrastructureError
    from sandbox.policy import Policy
    from sandbox.spec import Owner, build_spec

    image = docker_client.images.get("sandbox/testkit:latest").id
    policy = Policy.model_validate(
        {
            "version": 1,
            "tool": "echo",
            "image": {"name": "sandbox/testkit", "id": image},
            "command": ["python3", "/opt/testkit/main.py"],
        }
    )
    unseen = str(tmp_path / "not-there" / "stdout")
    spec = build_spec(
        policy,
        run_id=f"unseen{os.getpid()}",
        policy_sha256="0" * 64,
        inputs={},
        staging_dir=None,
        timeout_s=5,
        owner=Owner(pid=os.getpid(), start_time=1.0, host="h"),
        deadline=0.0,
        stdout_pipe=unseen,
    )
    with pytest.raises(InfrastructureError) as caught:
        DockerRuntime().create(spec)
    assert unseen in str(caught.value)
    assert caught.value.fix is not None
    assert "TMPDIR" in caught.value.fix
    assert docker_client.containers.list(all=True, filters={"name": spec.name}) == []
