"""Host facts through psutil (its only user): who this coordinator is, whether another
coordinator is still alive, and whether a run's memory fits. Snapshots are taken here; the
decisions on them are pure functions.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from .errors import InfrastructureError
from .log import logger
from .spec import Owner

# Memory the host keeps for itself and the engine, on top of what runs may claim.
DEFAULT_RESERVE_MB = 512
# How long a run waits for memory held by other runs to come back before it is refused.
ADMISSION_WAIT_S = 30.0
ADMISSION_POLL_S = 0.5


def current_owner() -> Owner:
    """This process as a container owner: pid plus start time (pids get reused)."""
    me = psutil.Process(os.getpid())
    return Owner(pid=me.pid, start_time=me.create_time(), host=socket.gethostname())


def owner_alive(pid: int, start_time: float) -> bool:
    """Whether the process that created a container still runs (same pid *and* start time)."""
    try:
        return abs(psutil.Process(pid).create_time() - start_time) < 0.01
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


@dataclass(frozen=True)
class HostSnapshot:
    available_memory_mb: int
    total_memory_mb: int
    cpu_count: int


def snapshot() -> HostSnapshot:
    memory = psutil.virtual_memory()
    return HostSnapshot(
        available_memory_mb=memory.available // (1024 * 1024),
        total_memory_mb=memory.total // (1024 * 1024),
        cpu_count=psutil.cpu_count() or 1,
    )


def free_disk_mb(path: str) -> int:
    return psutil.disk_usage(path).free // (1024 * 1024)


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
        return str(psutil.Process(os.getppid()).name())
    except (psutil.Error, OSError):
        return None
