"""Unit-tier fixtures: policies written to tmp dirs, a coordinator over the fake runtime."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandbox.coordinator import Coordinator
from sandbox.fake_runtime import FakeContainer, FakeRuntime
from sandbox.request import Request
from sandbox.spec import Owner

IMAGE_ID = "sha256:" + "ab" * 32


def policy_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "version": 1,
        "tool": "echo",
        "description": "test tool",
        "image": {"name": "sandbox/testkit", "id": IMAGE_ID},
        "command": ["python3", "/opt/testkit/main.py"],
        "args_schema": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"case": {"type": "string", "maxLength": 32}},
        },
        "inputs": {"allowed_roots": [], "max": 2},
        "output": {"required": False, "max_mb": 1},
        "limits": {"timeout_s": 10, "memory_mb": 128, "cpus": 0.5, "pids": 32, "tmpfs_mb": 16},
    }
    data.update(overrides)
    return data


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "echo.yaml").write_text(yaml.safe_dump(policy_data()))
    return directory


@pytest.fixture
def write_policy(policy_dir: Path) -> Callable[..., Path]:
    def write(**overrides: Any) -> Path:
        data = policy_data(**overrides)
        path = policy_dir / f"{data['tool']}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return write


class FakeClock:
    """Monotonic time that tests move by hand."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
def coordinator(runtime: FakeRuntime, policy_dir: Path, clock: FakeClock) -> Coordinator:
    return Coordinator(
        runtime=runtime,
        policy_dir=policy_dir,
        clock=clock,
        owner=Owner(pid=4242, start_time=1.0, host="test-host"),
        poll_s=0.005,
        output_poll_s=0.005,
        admission=lambda _mb: None,
    )


@pytest.fixture
def run(coordinator: Coordinator, runtime: FakeRuntime) -> Callable[..., list[dict[str, Any]]]:
    """Run one request through the coordinator with the given fake container script."""

    def go(
        script: FakeContainer | None = None,
        cancel: threading.Event | None = None,
        **request: Any,
    ) -> list[dict[str, Any]]:
        if script is not None:
            runtime.scripts.append(script)
        req = Request(**{"tool": "echo", **request})
        return list(coordinator.run(req, run_id="run1", cancel=cancel))

    return go


def frame_line(obj: str) -> bytes:
    return obj.encode() + b"\n"


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected socket pair: (ours, the engine's end of an attach connection)."""
    ours, engine = socket.socketpair()
    yield ours, engine
    ours.close()
    engine.close()
