"""The coordinator as callers use it: ``sandbox run`` one process per call, and one long-lived
``sandbox serve`` spoken to over JSON-RPC. Output is read in large chunks and parsed only where
the answer needs it, so the bench's own CPU stays off the measured path as far as possible.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESPONSE_PREFIX = b'{"jsonrpc":"2.0","id":'
ASSIGNED_PREFIX = b'{"jsonrpc":"2.0","method":"run.assigned"'
# Found faster than the prefix, which event lines share up to its last word.
ASSIGNED_MARK = b'"run.assigned"'
DATA_MARK = b'"type":"data"'
READ_BYTES = 1 << 20
HWM_SAMPLE_S = 0.005


@dataclass(frozen=True)
class Outcome:
    seconds: float
    status: str
    bytes: int
    peak_rss_kb: int = 0
    # From the first `data` frame to the end of the run: the streaming phase.
    streaming_s: float = 0.0


def _sandbox_argv(policies: Path) -> list[str]:
    return [sys.executable, "-m", "sandbox", "--policies", str(policies)]


def run_once(policies: Path, args: dict[str, Any], env: dict[str, str]) -> Outcome:
    """``sandbox run testkit --args …``: wall time from spawn to exit, peak RSS of the process."""
    argv = [*_sandbox_argv(policies), "run", "testkit", "--args", json.dumps(args)]
    began = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=ROOT
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    total, tail = 0, b""
    first: float | None = None
    # Large raw reads and no copying beyond the last 4 KiB: the reader's CPU shares the two
    # cores with the measured pipeline.
    peak_kb, next_sample = 0, 0.0
    while data := os.read(fd, READ_BYTES):
        now = time.perf_counter()
        if first is None and DATA_MARK in data:
            first = now
        total += len(data)
        tail = data[-4096:] if len(data) >= 4096 else (tail + data)[-4096:]
        # The high-water mark only rises, so a sample every few ms finds it: reading /proc on
        # every read (thousands of ~60 KB reads) cost the client 0.12 s of CPU per 200 MiB,
        # on the two cores the run shares.
        if now >= next_sample:
            peak_kb = max(peak_kb, _hwm_kb(proc.pid))
            next_sample = now + HWM_SAMPLE_S
    peak_kb = max(peak_kb, _hwm_kb(proc.pid))
    _, status, _usage = os.wait4(proc.pid, 0)
    ended = time.perf_counter()
    proc.returncode = os.waitstatus_to_exitcode(status)
    last = json.loads(tail.rstrip(b"\n").rsplit(b"\n", 1)[-1])
    return Outcome(ended - began, str(last.get("status")), total, peak_kb, ended - (first or ended))


def _hwm_kb(pid: int) -> int:
    """The peak RSS of the program ``pid`` runs now. Not ``wait4``'s ``ru_maxrss``: that keeps
    the high-water mark from before ``exec``, when the child was a copy of this (larger, and
    growing) bench process."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0  # exiting: its memory is already gone


@dataclass
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] | None = None
    bytes: int = 0
    began: float = 0.0
    ended: float = 0.0
    first_data: float = 0.0


class ServeOutput:
    """What a client of ``sandbox serve`` reads, accounted without parsing each line: only the
    lines that answer a call or assign a run are parsed, and the bytes of a read go to the one
    run in progress without looking at each line. A per-line or per-byte scan in the client
    would be measured with the server's cost, on the same two cores: counting the newlines
    and run ids of each read cost 0.54 s of CPU per 200 MiB, more than the server's own work.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[int, _Pending] = {}
        self._by_run: dict[str, _Pending] = {}
        self._rest = b""

    def feed(self, data: bytes) -> None:
        first = data.find(b"\n")
        if first < 0:
            self._rest += data
            return
        rest = self._rest
        self._block(rest + data[: first + 1], 0, len(rest) + first + 1)  # one line
        last = data.rfind(b"\n") + 1
        if last > first + 1:
            self._block(data, first + 1, last)
        self._rest = data[last:]

    def _block(self, data: bytes, start: int, end: int) -> None:
        """The complete lines ``data[start:end]``."""
        if data.find(RESPONSE_PREFIX, start, end) < 0 and data.find(ASSIGNED_MARK, start, end) < 0:
            # No answer and no assignment among these lines: they are all events, and a
            # run's events come after its assignment and before its answer.
            with self.lock:
                sole = next(iter(self._by_run.values())) if len(self._by_run) == 1 else None
            if sole is not None:
                self._events(sole, end - start, data, start, end)
                return
        for line in data[start:end].splitlines(keepends=True):
            self._line(line)

    def _line(self, line: bytes) -> None:
        if line.startswith(RESPONSE_PREFIX):
            message = json.loads(line)
            with self.lock:
                pending = self.pending.pop(message["id"], None)
                self._by_run = {k: v for k, v in self._by_run.items() if v is not pending}
            if pending is not None:
                pending.ended = time.perf_counter()
                pending.result = message.get("result") or {"error": message.get("error")}
                pending.done.set()
        elif line.startswith(ASSIGNED_PREFIX):
            params = json.loads(line)["params"]
            with self.lock:
                pending = self.pending.get(params["id"])
                if pending is not None:
                    self._by_run[params["run_id"]] = pending
        else:
            # An event: the run id sits at a fixed place in it.
            marker = line.find(b'"run_id":"')
            if marker >= 0:
                with self.lock:
                    target = self._by_run.get(line[marker + 10 : marker + 42].decode())
                if target is not None:
                    self._events(target, len(line), line, 0, min(len(line), 200))

    @staticmethod
    def _events(target: _Pending, size: int, data: bytes, start: int, end: int) -> None:
        target.bytes += size
        if not target.first_data and data.find(DATA_MARK, start, end) >= 0:
            target.first_data = time.perf_counter()


class ServeClient:
    """One ``sandbox serve`` process; ``call`` blocks until the answer of that request."""

    def __init__(self, policies: Path, env: dict[str, str], max_concurrent: int = 4) -> None:
        argv = [*_sandbox_argv(policies), "serve", "--max-concurrent", str(max_concurrent)]
        self.proc = subprocess.Popen(
            argv,
            bufsize=READ_BYTES,  # few reads per large event line
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
        )
        self.output = ServeOutput()
        self._next = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        """Large raw reads, handed whole to the output's accounting."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while data := os.read(fd, READ_BYTES):
            self.output.feed(data)

    def submit(self, method: str, params: dict[str, Any] | None = None) -> _Pending:
        with self.output.lock:
            self._next += 1
            rpc_id = self._next
            pending = _Pending(began=time.perf_counter())
            self.output.pending[rpc_id] = pending
        message = {"jsonrpc": "2.0", "id": rpc_id, "method": method}
        if params is not None:
            message["params"] = params
        assert self.proc.stdin is not None
        with self.output.lock:
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")
            self.proc.stdin.flush()
        return pending

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        pending = self.submit(method, params)
        if not pending.done.wait(600):
            msg = f"no answer to {method} within 600 s"
            raise TimeoutError(msg)
        assert pending.result is not None
        return pending.result

    def run(self, args: dict[str, Any]) -> Outcome:
        pending = self.submit("run", {"tool": "testkit", "args": args})
        pending.done.wait(600)
        result = pending.result or {}
        streaming = pending.ended - (pending.first_data or pending.ended)
        return Outcome(
            pending.ended - pending.began,
            str(result.get("status")),
            pending.bytes,
            streaming_s=streaming,
        )

    def wait_ready(self) -> None:
        self.call("health")

    def close(self) -> int:
        try:
            self.call("shutdown")
        finally:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        return self.proc.wait(120)


def proc_stats(pid: int) -> dict[str, int]:
    """Open fds, threads, current and peak RSS (KiB) of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)

    def kib(key: str) -> int:
        return int(fields[key].split()[0])

    return {
        "fds": sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir()),
        "threads": int(fields["Threads"]),
        "rss_kb": kib("VmRSS"),
        "hwm_kb": kib("VmHWM"),
    }


def in_flight(total: int, width: int, start_one: Callable[[], Callable[[], bool]]) -> float:
    """Keep ``width`` runs going until ``total`` are done; runs per second.

    ``start_one`` starts a run and returns a poll function (True once the run is done).
    """
    began = time.perf_counter()
    started, done = 0, 0
    live: list[Callable[[], bool]] = []
    while done < total:
        while len(live) < width and started < total:
            live.append(start_one())
            started += 1
        still = [poll for poll in live if not poll()]
        done += len(live) - len(still)
        live = still
        time.sleep(0.002)
    return total / (time.perf_counter() - began)
