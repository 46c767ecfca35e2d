"""Host facts read from /proc, checked against real processes: a container owner's start time,
whether an owner still runs, the memory snapshot admission uses, and the caller's name."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import hostcheck
from sandbox.errors import InfrastructureError
from sandbox.hostcheck import (
    SAME_START_S,
    current_owner,
    owner_alive,
    parent_name,
    process_start_time,
    snapshot,
)

# One clock tick, the resolution of a start time.
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started by a test, killed and reaped after it."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def sleeper(started: list[subprocess.Popen[bytes]], program: str = "sleep") -> int:
    proc = subprocess.Popen([program, "30"])
    started.append(proc)
    return proc.pid


def comm_once_execd(pid: int, name: str, within_s: float = 5.0) -> str:
    """The command name of ``pid`` once it shows ``name``: ``Popen`` can return while the
    child's exec has not yet renamed it (seen under load in CI)."""
    give_up = time.monotonic() + within_s
    comm = Path(f"/proc/{pid}/comm").read_text().strip()
    while comm != name and time.monotonic() < give_up:
        time.sleep(0.01)
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    return comm


def test_start_times_follow_the_order_and_spacing_of_process_starts(
    spawn: list[subprocess.Popen[bytes]],
) -> None:
    first = sleeper(spawn)
    time.sleep(0.3)
    second = sleeper(spawn)
    gap = process_start_time(second) - process_start_time(first)
    assert 0.3 - 2 * TICK_S <= gap < 5.0  # the upper bound only rules out nonsense


def test_a_start_time_is_the_boot_clock_when_the_process_started(
    spawn: list[subprocess.Popen[bytes]],
) -> None:
    # Seconds after boot, never moved by the wall clock: the boot clock before and after the
    # spawn brackets it, to the tick.
    before = time.clock_gettime(time.CLOCK_BOOTTIME)
    pid = sleeper(spawn)
    after = time.clock_gettime(time.CLOCK_BOOTTIME)
    assert before - TICK_S <= process_start_time(pid) <= after + TICK_S


def test_this_process_as_owner_is_alive() -> None:
    owner = current_owner()
    assert owner.pid == os.getpid()
    assert owner.start_time == process_start_time(os.getpid())
    assert owner_alive(owner.pid, owner.start_time)


def test_a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields(
    spawn: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    odd = tmp_path / "a) b (c"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", odd)
    plain = sleeper(spawn)
    named = sleeper(spawn, str(odd))
    assert comm_once_execd(named, "a) b (c") == "a) b (c"
    assert 0 <= process_start_time(named) - process_start_time(plain) < 5.0


def test_an_owner_is_alive_only_while_the_same_process_runs(
    spawn: list[subprocess.Popen[bytes]],
) -> None:
    pid = sleeper(spawn)
    started = process_start_time(pid)
    assert owner_alive(pid, started)
    # The same pid with another start time is a reused pid: a different process.
    assert not owner_alive(pid, started - 10 * SAME_START_S)
    proc = spawn.pop()
    proc.kill()
    proc.wait()
    assert not owner_alive(pid, started)


def test_a_pid_that_does_not_exist_is_not_alive() -> None:
    assert not owner_alive(2**22 + 1, 0.0)  # above the kernel's pid_max ceiling
    with pytest.raises(FileNotFoundError):
        process_start_time(2**22 + 1)


def test_the_snapshot_has_the_hosts_memory_and_cpus() -> None:
    host = snapshot()
    meminfo = Path("/proc/meminfo").read_text()
    total_kb = int(meminfo.split("MemTotal:")[1].split()[0])
    assert host.total_memory_mb == total_kb // 1024
    assert 0 < host.available_memory_mb <= host.total_memory_mb
    assert host.cpu_count == os.cpu_count()


def test_the_parent_name_is_the_callers_command(tmp_path: Path) -> None:
    caller = tmp_path / "my-caller"
    shutil.copy(shutil.which("sh") or "/bin/sh", caller)
    code = "from sandbox.hostcheck import parent_name; print(parent_name())"
    # `; true` keeps the shell alive as the parent instead of exec'ing Python in its place.
    script = f"{sys.executable} -c '{code}'; true"
    out = subprocess.run([str(caller), "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "my-caller"
    assert parent_name() == Path(f"/proc/{os.getppid()}/comm").read_text().strip()


@pytest.mark.parametrize(
    ("meminfo", "expected"),
    [
        (None, "cannot read /proc/meminfo"),
        ("MemFree: 100 kB\n", "no MemTotal or MemAvailable/MemFree line"),
        ("MemTotal: 100 kB\n", "no MemTotal or MemAvailable/MemFree line"),
    ],
)
def test_a_host_without_readable_memory_facts_is_an_infrastructure_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, meminfo: str | None, expected: str
) -> None:
    if meminfo is not None:
        (tmp_path / "meminfo").write_text(meminfo)
    monkeypatch.setattr(hostcheck, "PROC", tmp_path)
    with pytest.raises(InfrastructureError, match=expected) as raised:
        snapshot()
    assert raised.value.fix == hostcheck.PROC_FIX


def test_memfree_stands_in_where_memavailable_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "meminfo").write_text("MemTotal: 2097152 kB\nMemFree: 1048576 kB\n")
    monkeypatch.setattr(hostcheck, "PROC", tmp_path)
    host = snapshot()
    assert (host.total_memory_mb, host.available_memory_mb) == (2048, 1024)


def test_an_owner_without_proc_is_an_infrastructure_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(hostcheck, "PROC", tmp_path)
    with pytest.raises(InfrastructureError, match="cannot read this process's start time"):
        current_owner()
