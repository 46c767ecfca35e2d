"""The coordinator over the fake runtime: every ending produces the right frames and status,
and the container is always removed before the exit frame."""

from __future__ import annotations

import json
import os
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sandbox import hostcheck
from sandbox.audit import AuditLog, AuditRecord, RunFacts, tail
from sandbox.coordinator import Coordinator, should_reap
from sandbox.errors import InfrastructureError, InvalidRequest
from sandbox.fake_runtime import FakeContainer, FakeRuntime
from sandbox.frame_models import decode
from sandbox.request import Request
from sandbox.spec import STDOUT_PIPE_TARGET, Owner
from sandbox.stdout_pipe import DIR_PREFIX, StdoutPipe

from .conftest import FakeClock

Run = Callable[..., list[dict[str, Any]]]


def types(frames: list[dict[str, Any]]) -> list[str]:
    return [f["type"] for f in frames]


def test_happy_path_frames_in_order_with_consecutive_seq(run: Run, runtime: FakeRuntime) -> None:
    script = FakeContainer(
        output=[
            ("stdout", b'{"type":"progress","message":"go","fraction":0.5}\n'),
            ("stdout", b'{"type":"result","payload":{"rows":3}}\n'),
        ]
    )
    frames = run(script, args={"case": "x"})
    assert types(frames) == ["accepted", "started", "progress", "result", "exit"]
    assert [f["seq"] for f in frames] == list(range(5))
    assert frames[-1]["status"] == "ok"
    assert frames[-1]["exit_code"] == 0
    for frame in frames:
        decode(json.dumps(frame))  # every frame validates against the protocol models


def test_frames_of_one_read_come_as_one_batch(
    coordinator: Coordinator, runtime: FakeRuntime
) -> None:
    lines = b"".join(b'{"type":"data","payload":%d}\n' % i for i in range(3))
    runtime.scripts.append(
        FakeContainer(output=[("stdout", lines), ("stdout", b'{"type":"result","payload":1}\n')])
    )
    request = Request(tool="echo", args={"case": "x"})
    batches = list(coordinator.run_batches(request, run_id="run1"))
    assert [types(batch) for batch in batches] == [
        ["accepted"],
        ["started"],
        ["data", "data", "data"],
        ["result"],
        ["exit"],
    ]
    flat = [frame for batch in batches for frame in batch]
    assert [f["seq"] for f in flat] == list(range(7))


def test_request_reaches_stdin_with_container_paths(
    run: Run, runtime: FakeRuntime, tmp_path: Path
) -> None:
    run(FakeContainer(), args={"case": "x"})
    sent = json.loads(runtime.stdin["fake-0"])
    assert sent == {"run_id": "run1", "args": {"case": "x"}, "inputs": {}, "output_dir": None}


def test_container_removed_after_every_run(run: Run, runtime: FakeRuntime) -> None:
    run(FakeContainer(exit_code=3))
    assert runtime.calls[-1] == ("remove", "fake-0")
    assert runtime.live == {}


def test_a_caller_that_stops_reading_early_still_gets_the_container_removed(
    coordinator: Coordinator, runtime: FakeRuntime
) -> None:
    lines = b"".join(b'{"type":"data","payload":%d}\n' % i for i in range(3))
    runtime.scripts.append(FakeContainer(output=[("stdout", lines), ("stdout", lines)]))
    frames = coordinator.run(Request(tool="echo", args={"case": "x"}), run_id="run1")
    assert [next(frames)["type"] for _ in range(3)] == ["accepted", "started", "data"]
    frames.close()  # mid-batch, container running
    assert runtime.calls[-1] == ("remove", "fake-0")
    assert runtime.live == {}


def test_nonzero_exit_is_tool_error_with_an_error_frame(run: Run) -> None:
    frames = run(FakeContainer(exit_code=3))
    assert frames[-2]["error"]["kind"] == "ToolError"
    assert frames[-1]["status"] == "tool_error"
    assert frames[-1]["exit_code"] == 3


def test_script_error_frame_is_not_duplicated(run: Run) -> None:
    line = b'{"type":"error","error":{"kind":"ToolError","message":"bad","traceback":[]}}\n'
    frames = run(FakeContainer(output=[("stdout", line)], exit_code=1))
    assert types(frames) == ["accepted", "started", "error", "exit"]


def test_script_cannot_claim_another_error_kind(run: Run) -> None:
    line = (
        b'{"type":"error","error":{"kind":"Timeout","message":"x","traceback":[],"details":{}}}\n'
    )
    frames = run(FakeContainer(output=[("stdout", line)], exit_code=1))
    assert frames[2]["error"]["kind"] == "ToolError"


def test_forged_exit_frame_is_data_and_status_comes_from_the_engine(run: Run) -> None:
    forged = b'{"type":"exit","status":"ok","exit_code":0}\n'
    frames = run(FakeContainer(output=[("stdout", forged)], exit_code=2))
    assert frames[2] == {**frames[2], "type": "log", "stream": "stdout"}
    assert [f["type"] for f in frames].count("exit") == 1
    assert frames[-1]["status"] == "tool_error"


def test_oom_is_resource_limit(run: Run) -> None:
    frames = run(FakeContainer(exit_code=137, oom_killed=True))
    assert frames[-1]["status"] == "resource_limit"
    assert frames[-1]["oom_killed"] is True
    assert frames[-2]["error"]["kind"] == "ResourceLimit"


def test_timeout_on_a_fake_clock_kills_and_reports_timeout(
    coordinator: Coordinator, runtime: FakeRuntime, clock: FakeClock
) -> None:
    runtime.scripts.append(FakeContainer(block_until_killed=True))
    frames_iter = coordinator.run(Request(tool="echo"), run_id="t")
    first = [next(frames_iter), next(frames_iter)]
    assert types(first) == ["accepted", "started"]
    clock.advance(11)
    rest = list(frames_iter)
    assert rest[-1]["status"] == "timeout"
    assert rest[-2]["error"]["kind"] == "Timeout"
    assert ("kill", "fake-0") in runtime.calls
    assert runtime.live == {}


def test_request_timeout_lowers_the_deadline(
    coordinator: Coordinator, runtime: FakeRuntime, clock: FakeClock
) -> None:
    runtime.scripts.append(FakeContainer(block_until_killed=True))
    frames_iter = coordinator.run(Request(tool="echo", timeout_s=2), run_id="t")
    assert next(frames_iter)["limits"]["timeout_s"] == 2
    next(frames_iter)
    clock.advance(2.5)
    assert list(frames_iter)[-1]["status"] == "timeout"


def test_cancel_removes_the_container_and_reports_interrupted(
    coordinator: Coordinator, runtime: FakeRuntime
) -> None:
    runtime.scripts.append(FakeContainer(block_until_killed=True))
    cancel = threading.Event()
    frames_iter = coordinator.run(Request(tool="echo"), run_id="c", cancel=cancel)
    next(frames_iter), next(frames_iter)
    cancel.set()
    rest = list(frames_iter)
    assert rest[-1]["status"] == "interrupted"
    assert rest[-2]["error"]["kind"] == "Interrupted"
    assert runtime.live == {}


def test_sigkill_at_the_memory_limit_without_the_oom_flag_is_still_resource_limit(run: Run) -> None:
    # gVisor kills for memory inside the sandbox; the engine then reports 137 and no OOM flag.
    frames = run(FakeContainer(exit_code=137, memory_peak_bytes=127 * 1024 * 1024))
    assert frames[-1]["status"] == "resource_limit"
    assert frames[-1]["oom_killed"] is True


def test_sigkill_far_below_the_memory_limit_is_a_tool_error(run: Run) -> None:
    frames = run(FakeContainer(exit_code=137, memory_peak_bytes=10 * 1024 * 1024))
    assert frames[-1]["status"] == "tool_error"
    assert frames[-1]["oom_killed"] is False


def test_pids_limit_hit_and_a_failing_tool_is_resource_limit(run: Run) -> None:
    frames = run(FakeContainer(exit_code=1, pids_limit_hits=3, block_until_killed=False))
    assert frames[-1]["status"] == "resource_limit"
    assert frames[-2]["error"]["details"]["limit"] == "pids"


def test_pids_limit_hit_by_a_tool_that_copes_is_still_ok(run: Run) -> None:
    assert run(FakeContainer(exit_code=0, pids_limit_hits=3))[-1]["status"] == "ok"


def test_stdout_over_the_cap_is_resource_limit(write_policy: Callable[..., Path], run: Run) -> None:
    write_policy(limits={"timeout_s": 10, "memory_mb": 128, "stdout_mb": 1, "tmpfs_mb": 16})
    chunk = (b"x" * 1023 + b"\n") * 512
    frames = run(FakeContainer(output=[("stderr", chunk)] * 4, block_until_killed=True))
    assert frames[-1]["status"] == "resource_limit"
    assert "stdout" in frames[-2]["error"]["message"]
    logs = [f for f in frames if f["type"] == "log"]
    assert 1000 <= len(logs) <= 1024


def test_engine_error_mid_stream_still_removes_the_container(
    run: Run, runtime: FakeRuntime
) -> None:
    frames = run(FakeContainer(output=[("stdout", b"partial\n")], fail_mid_stream=True))
    assert frames[-1]["status"] == "infrastructure_error"
    assert ("remove", "fake-0") in runtime.calls


def test_image_not_the_pinned_one_is_infrastructure_error_naming_both_ids(
    run: Run, runtime: FakeRuntime
) -> None:
    runtime.image_ids["sandbox/testkit"] = "sha256:" + "cd" * 32
    frames = run()
    assert types(frames) == ["error", "exit"]
    assert frames[-1]["status"] == "infrastructure_error"
    message = frames[0]["error"]["message"]
    assert "cd" * 32 in message
    assert "ab" * 32 in message
    assert not runtime.was_called("create")


def test_invalid_args_never_reach_the_engine(run: Run, runtime: FakeRuntime) -> None:
    frames = run(args={"case": "x", "extra": 1})
    assert frames[-1]["status"] == "invalid_request"
    assert frames[0]["error"]["kind"] == "InvalidRequest"
    assert not runtime.was_called("create")


def test_unknown_tool_is_denied(run: Run, runtime: FakeRuntime) -> None:
    frames = run(tool="nope")
    assert frames[-1]["status"] == "denied"
    assert not runtime.was_called("create")


def test_timeout_above_the_policy_is_denied(run: Run) -> None:
    assert run(timeout_s=99)[-1]["status"] == "denied"


def test_a_parse_error_passed_as_request_still_ends_with_one_exit(coordinator: Coordinator) -> None:
    frames = list(coordinator.run(InvalidRequest("bad json")))
    assert types(frames) == ["error", "exit"]
    assert frames[-1]["status"] == "invalid_request"


def test_transient_create_error_is_reported_once_retries_are_the_runtimes_job(
    run: Run, runtime: FakeRuntime
) -> None:
    runtime.fail["create"] = [InfrastructureError("engine unreachable")]
    frames = run()
    assert frames[-1]["status"] == "infrastructure_error"
    assert not runtime.was_called("start")


def test_utf8_character_split_across_chunks_arrives_whole(run: Run) -> None:
    line = '{"type":"data","payload":"héllo ✓"}\n'.encode()
    cut = line.index("✓".encode()) + 1
    frames = run(FakeContainer(output=[("stdout", line[:cut]), ("stdout", line[cut:])]))
    assert frames[2]["payload"] == "héllo ✓"


def test_outputs_published_on_success(
    write_policy: Callable[..., Path], run: Run, runtime: FakeRuntime, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    frames = run(FakeContainer(writes={"result.txt": "42\n"}), output_dir=str(out))
    assert frames[-1]["status"] == "ok"
    assert frames[-1]["outputs"][0]["path"] == "result.txt"
    assert (out / "result.txt").read_text() == "42\n"
    assert not (tmp_path / ".sandbox-staging").exists()


def test_failed_run_leaves_no_partial_output_and_names_where_it_went(
    run: Run, runtime: FakeRuntime, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    frames = run(FakeContainer(exit_code=1, writes={"half.txt": "partial"}), output_dir=str(out))
    assert not out.exists()
    kept = Path(frames[-1]["partial_outputs"])
    assert kept.parent.name == ".sandbox-failed"
    assert (kept / "half.txt").read_text() == "partial"
    assert frames[-2]["error"]["details"]["partial_outputs"] == str(kept)


def test_reap_rule_spares_live_owners_and_takes_dead_ones() -> None:
    me = Owner(pid=1, start_time=10.0, host="h")
    labels = {
        "io.sandbox.owner_pid": "2",
        "io.sandbox.owner_start": "20.0",
        "io.sandbox.owner_host": "h",
        "io.sandbox.deadline": "100",
    }
    assert should_reap(labels, me, 50.0, lambda _pid, _start: False)
    assert not should_reap(labels, me, 50.0, lambda _pid, _start: True)
    mine = {**labels, "io.sandbox.owner_pid": "1", "io.sandbox.owner_start": "10.0"}
    assert not should_reap(mine, me, 50.0, lambda _pid, _start: False)
    elsewhere = {**labels, "io.sandbox.owner_host": "other"}
    assert not should_reap(elsewhere, me, 150.0, lambda _pid, _start: False)
    assert should_reap(elsewhere, me, 200.0, lambda _pid, _start: False)


def test_transient_errors_are_retried_only_for_idempotent_calls() -> None:
    from sandbox.docker_runtime import _is_transient
    from sandbox.engine import EngineError, EngineUnreachable

    def answered(status: int) -> EngineError:
        return EngineError(status, "x", method="GET", path="/containers/json")

    assert _is_transient(EngineUnreachable("connection reset by peer"))
    assert _is_transient(answered(500))
    assert _is_transient(answered(503))
    assert not _is_transient(answered(400))
    assert not _is_transient(answered(404))
    assert not _is_transient(answered(409))
    assert not _is_transient(ValueError())


def test_a_caller_that_stops_reading_gets_outputs_set_aside_and_an_audit_record(
    runtime: FakeRuntime, policy_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    # `sandbox run … | head -n1` or a dropped generator: the run did not end on its own, so
    # what it wrote is not published as if whole (it was before), and the audit log has it.
    log = tmp_path / "audit.jsonl"
    coordinator = Coordinator(
        runtime=runtime,
        policy_dir=policy_dir,
        clock=clock,
        owner=Owner(pid=4242, start_time=1.0, host="test-host"),
        audit=AuditLog(log),
        admission=lambda _mb: None,
    )
    lines = b"".join(b'{"type":"data","payload":%d}\n' % i for i in range(3))
    runtime.scripts.append(
        FakeContainer(output=[("stdout", lines), ("stdout", lines)], writes={"half.csv": "x"})
    )
    out = tmp_path / "out"
    request = Request(tool="echo", args={"case": "x"}, output_dir=str(out))
    frames = coordinator.run(request, run_id="run1")
    assert [next(frames)["type"] for _ in range(3)] == ["accepted", "started", "data"]
    frames.close()
    assert runtime.live == {}
    assert not out.exists()
    assert (tmp_path / ".sandbox-failed" / "run1" / "half.csv").read_text() == "x"
    record = tail(log, 1)[0]
    assert record["run_id"] == "run1"
    assert record["status"] == "interrupted"
    assert record["error_kind"] == "Interrupted"
    assert record["outputs_count"] == 0


def test_an_empty_output_dir_is_an_invalid_request_not_a_run_without_outputs(
    run: Run, runtime: FakeRuntime
) -> None:
    frames = run(FakeContainer(), args={"case": "x"}, output_dir="")
    assert frames[-1]["status"] == "invalid_request"
    assert frames[-2]["error"]["details"]["key"] == "output_dir"
    assert runtime.calls == []


def test_an_audit_record_that_cannot_be_encoded_still_ends_the_run_with_an_exit_frame(
    runtime: FakeRuntime, policy_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    class Broken(AuditLog):
        def record(self, facts: RunFacts) -> AuditRecord:
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")

    coordinator = Coordinator(
        runtime=runtime,
        policy_dir=policy_dir,
        clock=clock,
        owner=Owner(pid=4242, start_time=1.0, host="test-host"),
        audit=Broken(tmp_path / "audit.jsonl"),
        admission=lambda _mb: None,
    )
    runtime.scripts.append(FakeContainer())
    frames = list(coordinator.run(Request(tool="echo", args={"case": "x"}), run_id="run1"))
    assert types(frames)[-2:] == ["error", "exit"]
    assert frames[-1]["status"] == "infrastructure_error"
    assert "audit record not written" in frames[-2]["error"]["message"]


def test_outputs_too_many_to_list_within_the_frame_limit_are_not_published(
    write_policy: Callable[..., Path], run: Run, tmp_path: Path
) -> None:
    # The exit frame lists every output; 100 files broke a 4 KiB frame limit (a script can
    # leave 100,000 entries: a 12 MB exit line against the contract's 1 MiB).
    limits = {"timeout_s": 10, "memory_mb": 128, "tmpfs_mb": 16, "frame_kb": 4}
    write_policy(limits=limits)
    out = tmp_path / "out"
    writes = {f"file-{i:03}.csv": "x" for i in range(100)}
    frames = run(FakeContainer(writes=writes), output_dir=str(out))
    assert frames[-1]["status"] == "resource_limit"
    assert "frame_kb" in frames[-2]["error"]["message"]
    assert frames[-1]["outputs"] == []
    assert not out.exists()
    assert len(list(Path(frames[-1]["partial_outputs"]).iterdir())) == 100
    assert all(len(json.dumps(f, ensure_ascii=False)) < 4096 for f in frames)
    # Within the limit, the same tool publishes.
    fewer = {f"file-{i:03}.csv": "x" for i in range(20)}
    frames = run(FakeContainer(writes=fewer), output_dir=str(tmp_path / "out2"))
    assert frames[-1]["status"] == "ok"
    assert len(frames[-1]["outputs"]) == 20


def test_a_read_of_many_short_lines_comes_in_bounded_batches(
    coordinator: Coordinator, runtime: FakeRuntime
) -> None:
    # A 256 KiB read of bare newlines was one batch of 262,144 log frames built whole (a
    # script's 4 MiB of newlines took the CLI to 487 MB of memory).
    runtime.scripts.append(FakeContainer(output=[("stdout", b"\n" * 10_000 + b"x\n")]))
    request = Request(tool="echo", args={"case": "x"})
    batches = list(coordinator.run_batches(request, run_id="run1"))
    sizes = [len(batch) for batch in batches if batch[0]["type"] == "log"]
    assert sizes == [4096, 4096, 1809]
    flat = [frame for batch in batches for frame in batch]
    assert [f["seq"] for f in flat] == list(range(len(flat)))
    assert flat[-2]["line"] == "x"


def leftover_pipes(root: Path) -> list[Path]:
    return sorted(root.glob(f"{DIR_PREFIX}*"))


@pytest.fixture
def pipe_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def test_an_image_that_takes_a_stdout_pipe_gets_one_for_its_run_only(
    run: Run, runtime: FakeRuntime, pipe_root: Path
) -> None:
    runtime.stdout_pipes = True
    seen: list[tuple[str, int | None]] = []
    attach = runtime.attach

    def attach_and_look(container_id: str, stdout_pipe: int | None = None) -> Any:
        spec = runtime.specs[-1]
        assert spec.stdout_pipe is not None
        assert stat.S_ISFIFO(Path(spec.stdout_pipe).stat().st_mode)  # made before the container
        seen.append((spec.stdout_pipe, stdout_pipe))
        return attach(container_id, stdout_pipe)

    runtime.attach = attach_and_look  # type: ignore[method-assign]
    frames = run(FakeContainer())
    assert frames[-1]["status"] == "ok"
    [(path, fd)] = seen
    spec = runtime.specs[0]
    assert (path, STDOUT_PIPE_TARGET, True) in [
        (m.source, m.target, m.read_only) for m in spec.mounts
    ]
    assert fd is not None
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)  # closed with the run
    assert leftover_pipes(pipe_root) == []


def test_the_stdout_pipe_is_removed_when_the_container_cannot_be_made(
    run: Run, runtime: FakeRuntime, pipe_root: Path
) -> None:
    runtime.stdout_pipes = True
    runtime.fail["create"] = [InfrastructureError("create failed")]
    frames = run(FakeContainer())
    assert frames[-1]["status"] == "infrastructure_error"
    assert leftover_pipes(pipe_root) == []


def test_an_image_without_the_launchers_label_streams_through_attach_alone(
    run: Run, runtime: FakeRuntime, pipe_root: Path
) -> None:
    run(FakeContainer())
    assert runtime.specs[0].stdout_pipe is None
    assert runtime.attached_pipes == {"fake-0": None}
    assert leftover_pipes(pipe_root) == []


def test_reap_removes_the_stdout_pipes_of_gone_coordinators_on_this_host_only(
    coordinator: Coordinator, pipe_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same rule as for containers (should_reap), except that a pipe has no deadline:
    # another host's, in a shared TMPDIR, is never taken.
    assert coordinator.owner is not None
    me = coordinator.owner
    gone = StdoutPipe.create(Owner(pid=7, start_time=5.0, host=me.host))
    os.close(gone.fd)  # its coordinator was killed: nothing closed or removed it
    live = StdoutPipe.create(Owner(pid=8, start_time=6.0, host=me.host))
    elsewhere = StdoutPipe.create(Owner(pid=7, start_time=5.0, host="other-host"))
    mine = StdoutPipe.create(me)
    monkeypatch.setattr(hostcheck, "owner_alive", lambda pid, start: (pid, start) == (8, 6.0))

    coordinator.reap()

    assert leftover_pipes(pipe_root) == sorted(p.directory for p in (live, elsewhere, mine))
    for made in (live, elsewhere, mine):
        made.close()
