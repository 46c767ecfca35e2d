"""What ``sandbox serve`` reports under ``metrics``: runs by status, error counts, queue depth,
and per tool p50/p95 of queue wait, start latency and duration over a window of recent runs.
"""

from __future__ import annotations

import collections
import math
import threading
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import SandboxError, Status
from .frames import Frame
from .request import Request
from .rpc import RpcId

SAMPLES = 1024
STATUSES: tuple[Status, ...] = typing.get_args(Status)

# The frames whose arrival changes a statistic.
_COUNTED = frozenset({"accepted", "started", "error", "exit"})


@dataclass(eq=False)
class Job:
    """One ``run`` call, from the request to its answer."""

    rpc_id: RpcId
    run_id: str
    request: Request | SandboxError
    received: float
    cancel: threading.Event = field(default_factory=threading.Event)
    announced: threading.Event = field(default_factory=threading.Event)
    began: float | None = None
    accepted_at: float | None = None
    tool: str | None = None
    container_up: bool = False
    # Its answer is on its way: from now on the run is finished for ``cancel``, though its
    # thread has yet to give up its slot.
    answered: bool = False


def percentile(samples: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile; None without samples."""
    ordered = sorted(samples)
    if not ordered:
        return None
    return round(ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1], 4)


def _summary(samples: Iterable[float]) -> dict[str, float | None]:
    values = list(samples)
    return {"p50": percentile(values, 50), "p95": percentile(values, 95), "count": len(values)}


@dataclass
class ToolStats:
    """Per-tool samples, the most recent ``SAMPLES`` of each (bounded memory)."""

    runs: int = 0
    queue_wait: collections.deque[float] = field(default_factory=lambda: _window())
    start_latency: collections.deque[float] = field(default_factory=lambda: _window())
    duration: collections.deque[float] = field(default_factory=lambda: _window())


def _window() -> collections.deque[float]:
    return collections.deque(maxlen=SAMPLES)


class Metrics:
    """Counts and latencies, read off the frames as they pass (no coordinator hook needed).

    Per-tool entries start at the ``accepted`` frame, so only tools that have a policy appear.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._born = clock()
        self._lock = threading.Lock()
        self._runs: collections.Counter[str] = collections.Counter({s: 0 for s in STATUSES})
        self._errors: collections.Counter[str] = collections.Counter()
        self._rpc_errors: collections.Counter[str] = collections.Counter()
        self._tools: dict[str, ToolStats] = {}
        self._containers = 0

    def frame(self, job: Job, frame: Frame) -> None:
        kind = frame.get("type")
        if kind not in _COUNTED:
            return  # data, progress, log, result: nothing to count, no lock to take
        now = self._clock()
        with self._lock:
            if kind == "accepted":
                job.tool, job.accepted_at = str(frame.get("tool")), now
                stats = self._tools.setdefault(job.tool, ToolStats())
                stats.queue_wait.append((job.began or now) - job.received)
            elif kind == "started" and job.tool is not None and job.accepted_at is not None:
                job.container_up = True
                self._containers += 1
                self._tools[job.tool].start_latency.append(now - job.accepted_at)
            elif kind == "error":
                self._errors[str(frame.get("error", {}).get("kind"))] += 1
            elif kind == "exit":
                self._exit(job, frame)

    def _exit(self, job: Job, frame: Frame) -> None:
        self._runs[str(frame.get("status"))] += 1
        if job.container_up:
            job.container_up = False
            self._containers -= 1
        if job.tool is not None:
            stats = self._tools[job.tool]
            stats.runs += 1
            stats.duration.append(float(frame.get("duration_s") or 0.0))

    def rpc_error(self, code: int) -> None:
        with self._lock:
            self._rpc_errors[str(code)] += 1

    def snapshot(self, **gauges: Any) -> dict[str, Any]:
        with self._lock:
            tools = {
                name: {
                    "runs": stats.runs,
                    "queue_wait_s": _summary(stats.queue_wait),
                    "start_latency_s": _summary(stats.start_latency),
                    "duration_s": _summary(stats.duration),
                }
                for name, stats in sorted(self._tools.items())
            }
            return {
                "uptime_s": round(self._clock() - self._born, 3),
                **gauges,
                "active_containers": self._containers,
                "runs": dict(self._runs),
                "runs_total": sum(self._runs.values()),
                "errors": dict(self._errors),
                "rpc_errors": dict(self._rpc_errors),
                "tools": tools,
            }
