"""Resource attacks: bombs, fills, exhaustion and runaway time are held by the container's
limits, reported with the right status, and leave the host as it was."""

from __future__ import annotations

import pytest

from .conftest import RunResult, SecurityEnv, assert_exit, assert_host_invariants

pytestmark = pytest.mark.docker

MIB = 1024 * 1024


def assert_ended_at_the_memory_limit(result: RunResult, runtime: str) -> None:
    gvisor_killed_first = result.exit["oom_killed"] is False and result.exit["exit_code"] == 137
    if runtime == "runsc" and gvisor_killed_first:
        # gVisor sometimes kills the task inside the sandbox before the host cgroup's OOM
        # killer acts, and the engine then reports no OOM: the bomb is still ended (SIGKILL),
        # but the run can only be classified as a tool failure (docs/security.md).
        assert_exit(result, "tool_error", 1)
        return
    exit_frame = assert_exit(result, "resource_limit", 5)
    assert exit_frame["oom_killed"] is True
    assert result.errors[-1]["kind"] == "ResourceLimit"


def test_fork_bomb_is_held_by_pids_or_memory(security_env: SecurityEnv) -> None:
    result = security_env.result("fork_bomb")
    if security_env.runtime == "runc":
        # The pids cgroup stops fork() itself: the script sees EAGAIN and finishes.
        assert_exit(result, "ok", 0)
        assert result.result["children"] <= 64
        assert result.result["error"] == "Resource temporarily unavailable"
    else:
        # gVisor's guest processes are not host tasks, so the host pids limit does not count
        # them; the memory limit ends the bomb instead.
        assert_ended_at_the_memory_limit(result, security_env.runtime)
    assert_host_invariants(security_env, result)


def test_threads_start_under_both_runtimes(security_env: SecurityEnv) -> None:
    # Under runsc, gVisor applied the engine profile's clone3 refusal as EPERM, on which glibc
    # does not fall back to clone: no thread started, so no tool using DuckDB or dbt could run.
    # The launcher's stacked filter answers clone3 with ENOSYS (docs/security.md).
    result = security_env.result("threads")
    assert_exit(result, "ok", 0)
    assert result.result == {"threads": 8}


def test_a_child_pythons_large_print_arrives_whole(security_env: SecurityEnv) -> None:
    # Under runsc it arrived as its first 65,536 bytes while PYTHONUNBUFFERED was set in the
    # base image (docs/runtime.md).
    result = security_env.result("child_large_print")
    assert_exit(result, "ok", 0)
    lines = [f["line"] for f in result.frames if f["type"] == "log" and "q" in f["line"]]
    assert lines == ["q" * 200_000]


def test_thread_bomb_is_held(security_env: SecurityEnv) -> None:
    result = security_env.result("thread_bomb")
    if security_env.runtime == "runc":
        # ~63 threads, then EAGAIN from the pids limit.
        assert_exit(result, "ok", 0)
        assert result.result["threads"] <= 64
        assert result.result["error"] == "can't start new thread"
    else:
        # gVisor's guest threads are not host tasks, so the host pids limit does not count
        # them; the memory limit ends the bomb instead, as it does a fork bomb. As with the
        # memory bomb, gVisor may kill the task before the host cgroup reports the OOM.
        assert_ended_at_the_memory_limit(result, security_env.runtime)
    assert_host_invariants(security_env, result)


def test_memory_bomb_is_oom_killed_as_resource_limit(security_env: SecurityEnv) -> None:
    result = security_env.result("memory_bomb")
    assert_ended_at_the_memory_limit(result, security_env.runtime)
    assert_host_invariants(security_env, result)


def test_tmpfs_fill_stops_at_its_size_with_enospc(security_env: SecurityEnv) -> None:
    result = security_env.result("tmpfs_fill")
    assert_exit(result, "ok", 0)
    assert result.result["error"] == "ENOSPC"
    assert result.result["written_mb"] <= 16
    assert_host_invariants(security_env, result)


def test_output_dir_fill_is_stopped_and_nothing_published(security_env: SecurityEnv) -> None:
    result = security_env.result("output_fill")
    exit_frame = assert_exit(result, "resource_limit", 5)
    assert result.output_dir is not None
    assert not result.output_dir.exists()
    assert exit_frame["outputs"] == []
    assert_host_invariants(security_env, result)


@pytest.mark.parametrize("case", ["fsize_one_huge_file", "fsize_in_output"])
def test_one_huge_file_stops_at_rlimit_fsize_with_efbig(
    security_env: SecurityEnv, case: str
) -> None:
    result = security_env.result(case)
    assert_exit(result, "ok", 0)
    assert result.result["error"] == "EFBIG"
    assert result.result["size"] == 8 * MIB  # RLIMIT_FSIZE = output.max_mb
    assert result.result["limit"] == [8 * MIB, 8 * MIB]
    assert_host_invariants(security_env, result)


def test_inode_exhaustion_in_output_is_stopped_at_the_entry_cap(security_env: SecurityEnv) -> None:
    result = security_env.result("inode_exhaustion")
    # The watchdog counts entries in the staging dir and kills the run past 100 000; a slow
    # runtime may reach the (shorter) deadline first. Either way nothing is published.
    assert result.exit["status"] in ("resource_limit", "timeout"), result.describe()
    assert result.returncode in (5, 4)
    assert result.output_dir is not None
    assert not result.output_dir.exists()
    assert_host_invariants(security_env, result)


def test_fd_exhaustion_stops_at_nofile_with_emfile(security_env: SecurityEnv) -> None:
    result = security_env.result("fd_exhaustion")
    assert_exit(result, "ok", 0)
    assert result.result["error"] == "EMFILE"
    assert result.result["nofile"] == [4096, 4096]
    assert result.result["opened"] <= 4096
    assert_host_invariants(security_env, result)


@pytest.mark.parametrize("case", ["cpu_spin", "sleeper", "sigterm_ignorer"])
def test_runaway_past_the_deadline_is_killed_on_time(security_env: SecurityEnv, case: str) -> None:
    result = security_env.result(case)
    exit_frame = assert_exit(result, "timeout", 4)
    assert exit_frame["exit_code"] == 137
    assert result.errors[-1]["kind"] == "Timeout"
    # A 3 s deadline; generous slack for a loaded 2-core CI box, but no hang.
    assert exit_frame["duration_s"] < 20
    assert_host_invariants(security_env, result)
