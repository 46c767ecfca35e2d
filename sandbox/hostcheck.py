"""Host facts read from /proc: who this coordinator is, whether another coordinator is still
alive, and whether a run's memory fits. Snapshots are taken here; the decisions on them are pure
functions.

Read directly rather than through psutil: these are three small files, and importing psutil cost
every one-shot `sandbox run` ≈9 ms before its container could be created (docs/performance.md).
The project already runs on Linux only (the engine's socket, /proc/self/mountinfo, pipe sizes).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import InfrastructureError
from .log import logger
from .spec import Owner

# Memory the host keeps for itself and the engine, on top of what runs may claim.
DEFAULT_RESERVE_MB = 512
# How long a run waits for memory held by other runs to come back before it is refused.
ADMISSION_WAIT_S = 30.0
ADMISSION_POLL_S = 0.5
# Two start times closer than this are the same process start (they are whole clock ticks,
# 1/100 s, turned into floats).
SAME_START_S = 0.01

PROC = Path("/proc")
PROC_FIX = "run the coordinator on a Linux host with /proc mounted"
# What reading a process's start time raises when the process is gone (OSError) or its stat
# line does not parse.
UNREADABLE_STAT = (OSError, ValueError, IndexError)


def current_owner() -> Owner:
    """This process as a container owner: pid plus start time (pids get reused)."""
    pid = os.getpid()
    try:
        start_time = process_start_time(pid)
    except UNREADABLE_STAT as exc:
        msg = f"cannot read this process's start time from /proc/{pid}/stat: {exc}"
        raise InfrastructureError(msg, fix=PROC_FIX) from exc
    return Owner(pid=pid, start_time=start_time, host=socket.gethostname())


def owner_alive(pid: int, start_time: float) -> bool:
    """Whether the process that created a container still runs (same pid *and* start time)."""
    try:
        return abs(process_start_time(pid) - start_time) < SAME_START_S
    except UNREADABLE_STAT:
        return False


def process_start_time(pid: int) -> float:
    """When process ``pid`` started, in seconds after the host booted: its start tick (field 22
    of /proc/PID/stat) over the clock rate. Raises OSError if it is gone.

    Not seconds since the epoch, as psutil gives them (the tick plus /proc/stat's ``btime``):
    the kernel recomputes ``btime`` from the wall clock at every read, so a clock step (NTP)
    between two processes' reads would give a live owner two start times, and the reaper would
    take it for dead (psutil issue #2526). Ticks since boot never move."""
    stat = (PROC / str(pid) / "stat").read_bytes()
    # Field 2, the command name, may itself hold spaces and parentheses: count the fields
    # after its closing parenthesis (that is field 3, so field 22 is the 20th).
    after_name = stat[stat.rindex(b")") + 1 :].split()
    return int(after_name[19]) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class HostSnapshot:
    available_memory_mb: int
    total_memory_mb: int
    cpu_count: int


def snapshot() -> HostSnapshot:
    meminfo = _meminfo_kb()
    # MemAvailable (Linux ≥ 3.14) counts reclaimable caches; MemFree alone is the cautious
    # stand-in where it is missing.
    available = meminfo.get("MemAvailable", meminfo.get("MemFree"))
    if "MemTotal" not in meminfo or available is None:
        msg = "/proc/meminfo has no MemTotal or MemAvailable/MemFree line: cannot tell the memory"
        raise InfrastructureError(msg, fix=PROC_FIX)
    return HostSnapshot(
        available_memory_mb=available // 1024,
        total_memory_mb=meminfo["MemTotal"] // 1024,
        cpu_count=os.cpu_count() or 1,
    )


def _meminfo_kb() -> dict[str, int]:
    try:
        text = (PROC / "meminfo").read_text()
    except OSError as exc:
        msg = f"cannot read /proc/meminfo: {exc}"
        raise InfrastructureError(msg, fix=PROC_FIX) from exc
    sizes: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        fields = value.split()
        if fields and fields[0].isdigit():
            sizes[name] = int(fields[0])
    return sizes


def free_disk_mb(path: str) -> int:
    return shutil.disk_usage(path).free // (1024 * 1024)


def admit(memory_mb: int, host: HostSnapshot, reserve_mb: int = DEFAULT_RESERVE_MB) -> None:
    """Refuse a run whose memory limit does not fit what the host has available."""
    fits = host.available_memory_mb - reserve_mb
    if memory_mb > fits:
        msg = (
            f"the run's memory limit ({memory_mb} MiB) does not fit the host's available "
            f"memory ({host.available_memory_mb} MiB less a {reserve_mb} MiB reserve)"
        )
        raise InfrastructureError(
            msg,
            fix="wait for other runs to finish, or lower limits.memory_mb in the policy",
            limit="memory_mb",
        )


def admit_waiting(
    memory_mb: int,
    take_snapshot: Callable[[], HostSnapshot],
    reserve_mb: int = DEFAULT_RESERVE_MB,
    *,
    wait_s: float = ADMISSION_WAIT_S,
    poll_s: float = ADMISSION_POLL_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Admit a run once its memory limit fits; wait at most ``wait_s`` for that, then refuse.

    A limit that could never fit (above the host's total less the reserve) is refused at once:
    waiting would only delay the same answer.
    """
    host = take_snapshot()
    if memory_mb > host.total_memory_mb - reserve_mb:
        admit(
            memory_mb,
            HostSnapshot(host.total_memory_mb, host.total_memory_mb, host.cpu_count),
            reserve_mb,
        )
    give_up = clock() + wait_s
    waited = False
    while True:
        try:
            admit(memory_mb, host, reserve_mb)
        except InfrastructureError as exc:
            if clock() >= give_up:
                msg = f"{exc.message}; waited {wait_s:g}s for memory to free up"
                raise InfrastructureError(msg, fix=exc.fix, limit="memory_mb") from None
            if not waited:
                logger.info("waiting up to {:g}s for memory: {}", wait_s, exc.message)
                waited = True
            sleep(poll_s)
            host = take_snapshot()
            continue
        return


def parent_name() -> str | None:
    """The command name of this process's parent (the caller), for the audit log."""
    try:
        return (PROC / str(os.getppid()) / "comm").read_text().strip() or None
    except OSError:
        return None
