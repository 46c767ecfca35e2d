"""A scripted ``ContainerRuntime`` for unit tests: no engine, every call recorded.

A ``FakeContainer`` script says what the container writes (chunks, optionally split anywhere),
how it ends, and whether it blocks until killed. Failures can be injected per call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InfrastructureError
from .runtime import EngineInfo, ExitState, ManagedContainer, ResourceUsage, StreamName
from .spec import ContainerSpec


@dataclass
class FakeContainer:
    """What one container does once started."""

    output: list[tuple[StreamName, bytes]] = field(default_factory=list)
    exit_code: int = 0
    oom_killed: bool = False
    block_until_killed: bool = False
    fail_mid_stream: bool = False
    writes: dict[str, str] = field(default_factory=dict)
    """Files the "container" leaves under /output (relative path -> text), written at start."""
    pids_limit_hits: int = 0
    memory_peak_bytes: int = 1024 * 1024


@dataclass
class FakeRuntime:
    """Runs ``FakeContainer`` scripts in order, one per created container."""

    scripts: list[FakeContainer] = field(default_factory=list)
    image_ids: dict[str, str] = field(default_factory=dict)
    fail: dict[str, list[Exception]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    specs: list[ContainerSpec] = field(default_factory=list)
    stdin: dict[str, bytes] = field(default_factory=dict)
    live: dict[str, ManagedContainer] = field(default_factory=dict)
    _killed: dict[str, threading.Event] = field(default_factory=dict)
    _running: dict[str, FakeContainer] = field(default_factory=dict)
    _spec_of: dict[str, ContainerSpec] = field(default_factory=dict)
    # Whether images "have" the launcher that takes a stdout pipe; the pipes a run attached.
    stdout_pipes: bool = False
    attached_pipes: dict[str, int | None] = field(default_factory=dict)

    def _maybe_fail(self, call: str) -> None:
        pending = self.fail.get(call)
        if pending:
            raise pending.pop(0)

    def check_image(self, name: str, pinned_id: str) -> None:
        self.calls.append(("check_image", name))
        self._maybe_fail("check_image")
        actual = self.image_ids.get(name, pinned_id)
        if actual != pinned_id:
            msg = f"image {name} is {actual}, but the policy pins {pinned_id}"
            raise InfrastructureError(msg, image=name)

    def create(self, spec: ContainerSpec) -> str:
        self.calls.append(("create", spec.name))
        self._maybe_fail("create")
        container_id = f"fake-{len(self.specs)}"
        self.specs.append(spec)
        self._spec_of[container_id] = spec
        self._running[container_id] = self.scripts.pop(0) if self.scripts else FakeContainer()
        self._killed[container_id] = threading.Event()
        self.live[container_id] = ManagedContainer(
            id=container_id, name=spec.name, labels=dict(spec.labels), state="created"
        )
        return container_id

    def takes_stdout_pipe(self, pinned_id: str, runtime: str) -> bool:
        return self.stdout_pipes

    def attach(self, container_id: str, stdout_pipe: int | None = None) -> _FakeAttachment:
        self.calls.append(("attach", container_id))
        self._maybe_fail("attach")
        self.attached_pipes[container_id] = stdout_pipe
        return _FakeAttachment(self, container_id)

    def start(self, container_id: str) -> None:
        self.calls.append(("start", container_id))
        self._maybe_fail("start")
        script = self._running[container_id]
        if script.writes:
            spec = self._spec_of[container_id]
            output = next(Path(m.source) for m in spec.mounts if m.target == "/output")
            for rel, text in script.writes.items():
                (output / rel).write_text(text)

    def kill(self, container_id: str) -> None:
        self.calls.append(("kill", container_id))
        self._killed[container_id].set()

    def wait(self, container_id: str, timeout_s: float) -> ExitState:
        self.calls.append(("wait", container_id))
        self._maybe_fail("wait")
        script = self._running[container_id]
        if self._killed[container_id].is_set():
            return ExitState(exit_code=137, oom_killed=script.oom_killed)
        return ExitState(exit_code=script.exit_code, oom_killed=script.oom_killed)

    def remove(self, container_id: str) -> None:
        self.calls.append(("remove", container_id))
        self._maybe_fail("remove")
        self.live.pop(container_id, None)

    def usage(self, container_id: str) -> ResourceUsage:
        script = self._running[container_id]
        return ResourceUsage(script.pids_limit_hits, script.memory_peak_bytes)

    def list_managed(self) -> list[ManagedContainer]:
        self.calls.append(("list_managed", ""))
        return list(self.live.values())

    def info(self) -> EngineInfo:
        return EngineInfo(
            version="fake", api_version="1.41", runtimes=("runc",), cgroup_version="1"
        )

    def was_called(self, call: str) -> bool:
        return any(name == call for name, _ in self.calls)


class _FakeAttachment:
    def __init__(self, runtime: FakeRuntime, container_id: str) -> None:
        self._runtime = runtime
        self._id = container_id
        self._closed = threading.Event()

    def send_stdin(self, data: bytes) -> None:
        self._runtime.stdin[self._id] = data

    def chunks(self) -> Iterator[tuple[StreamName, bytes]]:
        script = self._runtime._running[self._id]
        killed = self._runtime._killed[self._id]
        for stream, chunk in script.output:
            if killed.is_set():
                return
            yield stream, chunk
        if script.fail_mid_stream:
            msg = "lost the container's output stream: connection reset"
            raise InfrastructureError(msg)
        if script.block_until_killed:
            while not (killed.is_set() or self._closed.is_set()):
                killed.wait(0.01)

    def close(self) -> None:
        self._closed.set()
