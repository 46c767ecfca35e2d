"""Host facts through psutil (its only user): who this coordinator is, whether another
coordinator is still alive, and whether a run's memory fits. Snapshots are taken here; the
decisions on them are pure functions.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import psutil

from .errors import InfrastructureError
from .spec import Owner

# Memory the host keeps for itself and the engine, on top of what runs may claim.
DEFAULT_RESERVE_MB = 512


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
