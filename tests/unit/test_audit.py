"""The audit log: one hash-chained record per run, verify catches any edit, deletion or
reorder, and a log that cannot be written refuses the run before any container."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sandbox.audit import GENESIS, AuditLog, AuditRecord, RunFacts, default_path, tail, verify
from sandbox.cli import main
from sandbox.coordinator import Coordinator
from sandbox.fake_runtime import FakeContainer, FakeRuntime
from sandbox.request import Request
from sandbox.spec import Owner

from .conftest import FakeClock


def facts(run_id: str = "r1", status: str = "ok", **changes: Any) -> RunFacts:
    base: dict[str, Any] = {
        "run_id": run_id,
        "request": {"tool": "echo", "args": {}},
        "tool": "echo",
        "policy_sha256": "ab" * 32,
        "image": "sandbox/testkit",
        "image_id": "sha256:" + "cd" * 32,
        "runtime": "runc",
        "limits": {"memory_mb": 128},
        "mounts": (("/data", "/inputs/d", True),),
        "env_keys": ("B", "A"),
        "container_created": True,
        "exit_frame": {"status": status, "exit_code": 0, "duration_s": 0.5, "outputs": []},
        "error_kind": None,
    }
    base.update(changes)
    return RunFacts(**base)


@pytest.fixture
def log(tmp_path: Path) -> AuditLog:
    return AuditLog(tmp_path / "state" / "audit.jsonl")


def write_runs(log: AuditLog, n: int) -> list[bytes]:
    for i in range(n):
        log.record(facts(f"r{i}"))
    return log.path.read_bytes().splitlines(keepends=True)


def test_records_are_chained_and_verify(log: AuditLog) -> None:
    lines = write_runs(log, 3)
    records = [AuditRecord.model_validate_json(line) for line in lines]
    assert [r.seq for r in records] == [0, 1, 2]
    assert records[0].prev == GENESIS
    assert verify(log.path).ok
    assert log.path.stat().st_mode & 0o777 == 0o600
    assert log.path.parent.stat().st_mode & 0o777 == 0o700


def test_env_values_are_never_recorded_only_keys(log: AuditLog) -> None:
    record = log.record(facts(env_keys=("TOKEN", "A")))
    assert record.env_keys == ["A", "TOKEN"]
    assert record.peak_memory_bytes is None
    assert record.peak_memory_note


@pytest.mark.parametrize(
    "tamper",
    [
        lambda ls: [ls[0], ls[1].replace(b'"status":"ok"', b'"status":"xx"'), ls[2]],  # edit
        lambda ls: [ls[0], ls[2]],  # delete a middle line
        lambda ls: [ls[1], ls[0], ls[2]],  # reorder
        lambda ls: ls[:2],  # cut the last line off
        lambda ls: ls[1:],  # cut the first line off
        lambda ls: [*ls[:2], ls[2][:-5]],  # torn last line
    ],
    ids=["edit", "delete", "reorder", "truncate-end", "truncate-start", "torn"],
)
def test_verify_detects_tampering(
    log: AuditLog, tamper: Callable[[list[bytes]], list[bytes]]
) -> None:
    lines = write_runs(log, 3)
    log.path.write_bytes(b"".join(tamper(lines)))
    assert not verify(log.path).ok


def test_verify_detects_a_rewritten_last_line_with_consistent_prev(log: AuditLog) -> None:
    lines = write_runs(log, 2)
    forged = json.loads(lines[1])
    forged["status"] = "ok"
    forged["exit_code"] = 42
    log.path.write_bytes(lines[0] + json.dumps(forged).encode() + b"\n")
    assert not verify(log.path).ok


def test_head_lagging_after_a_crash_is_not_tampering(log: AuditLog) -> None:
    write_runs(log, 2)
    head = log.head_path.read_text()
    log.record(facts("r2"))
    log.head_path.write_text(head)  # as if the process died before updating the head
    assert verify(log.path).ok


def test_concurrent_appends_keep_the_chain(log: AuditLog) -> None:
    threads = [threading.Thread(target=log.record, args=(facts(f"t{i}"),)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert verify(log.path).ok
    assert len(tail(log.path, 100)) == 20


def test_unwritable_log_refuses_the_run_before_any_container(
    tmp_path: Path, policy_dir: Path, runtime: FakeRuntime, clock: FakeClock
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    coordinator = Coordinator(
        runtime=runtime,
        policy_dir=policy_dir,
        clock=clock,
        owner=Owner(pid=1, start_time=1.0, host="h"),
        admission=lambda _mb: None,
        audit=AuditLog(blocker / "audit.jsonl"),
    )
    frames = list(coordinator.run(Request(tool="echo"), run_id="x"))
    assert [f["type"] for f in frames] == ["error", "exit"]
    assert frames[-1]["status"] == "infrastructure_error"
    assert "audit log" in frames[0]["error"]["message"]
    assert runtime.calls == []


def test_every_run_is_recorded_with_its_outcome(
    tmp_path: Path, policy_dir: Path, runtime: FakeRuntime, clock: FakeClock
) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    coordinator = Coordinator(
        runtime=runtime,
        policy_dir=policy_dir,
        clock=clock,
        owner=Owner(pid=1, start_time=1.0, host="h"),
        admission=lambda _mb: None,
        poll_s=0.005,
        audit=log,
    )
    runtime.scripts.append(FakeContainer(exit_code=3))
    list(coordinator.run(Request(tool="echo"), run_id="a"))
    list(coordinator.run(Request(tool="nope"), run_id="b"))
    records = tail(log.path, 10)
    assert [(r["run_id"], r["status"], r["exit_code"]) for r in records] == [
        ("a", "tool_error", 3),
        ("b", "denied", None),
    ]
    assert records[0]["container_created"] is True
    assert records[0]["image_id"].startswith("sha256:")
    assert records[0]["env_keys"] == ["SANDBOX_MAX_FRAME_BYTES"]
    assert records[1]["container_created"] is False
    assert verify(log.path).ok


def test_default_path_follows_env_then_xdg_then_home(tmp_path: Path) -> None:
    assert default_path({"SANDBOX_AUDIT_LOG": "/x/a.jsonl"}) == Path("/x/a.jsonl")
    assert default_path({"XDG_STATE_HOME": "/s"}) == Path("/s/sandbox/audit.jsonl")
    assert default_path({}).parts[-4:] == (".local", "state", "sandbox", "audit.jsonl")


def test_cli_verify_and_tail(log: AuditLog, capsys: pytest.CaptureFixture[str]) -> None:
    lines = write_runs(log, 3)
    assert main(["audit", "verify", "--file", str(log.path)]) == 0
    assert main(["audit", "tail", "-n", "2", "--json", "--file", str(log.path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(x)["run_id"] for x in out[-2:]] == ["r1", "r2"]
    log.path.write_bytes(lines[0] + lines[2])
    assert main(["--audit-log", str(log.path), "audit", "verify"]) == 1
    assert "TAMPERED" in capsys.readouterr().out


def test_tail_refuses_a_negative_count(log: AuditLog, capsys: pytest.CaptureFixture[str]) -> None:
    # `-n -2` printed nothing and exited 0.
    write_runs(log, 3)
    assert main(["audit", "tail", "-n", "-2", "--file", str(log.path)]) == 2
    assert "expected an integer >= 0" in capsys.readouterr().err


def test_an_append_reads_the_head_not_the_whole_log(
    log: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log grows by a line per run: appending must not cost a read of all of it."""
    write_runs(log, 5)

    def no_scan(_fh: Any) -> int:
        raise AssertionError("counted every line although the head was current")

    monkeypatch.setattr("sandbox.audit._count_lines", no_scan)
    assert log.record(facts("r5")).seq == 5
    assert verify(log.path).ok


@pytest.mark.parametrize(
    "break_head",
    [
        lambda head: head.unlink(),  # lost
        lambda head: head.write_text('{"lines": 2, "last_sha256": "00"}\n'),  # behind (crash)
        lambda head: head.write_text("{not json\n"),  # unreadable
    ],
)
def test_an_append_without_a_current_head_counts_the_lines(
    log: AuditLog, break_head: Callable[[Path], Any]
) -> None:
    write_runs(log, 4)
    break_head(log.head_path)
    assert log.record(facts("r4")).seq == 4
    assert verify(log.path).ok


def test_an_append_after_a_record_longer_than_the_read_block(log: AuditLog) -> None:
    long_env = tuple(f"K{i:05d}" for i in range(12_000))  # a record of ~100 KiB
    log.record(facts("r0", env_keys=long_env))
    log.record(facts("r1"))
    assert log.record(facts("r2")).seq == 2
    assert verify(log.path).ok
