"""Admission control: a run waits (bounded) for memory, then is refused with a clear message;
a limit that can never fit is refused at once."""

from __future__ import annotations

import pytest

from sandbox.errors import InfrastructureError
from sandbox.hostcheck import HostSnapshot, admit_waiting


class Host:
    def __init__(self, available: list[int], total: int = 8192) -> None:
        self.available = available
        self.total = total
        self.calls = 0

    def __call__(self) -> HostSnapshot:
        value = self.available[min(self.calls, len(self.available) - 1)]
        self.calls += 1
        return HostSnapshot(available_memory_mb=value, total_memory_mb=self.total, cpu_count=2)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_fits_now_is_admitted_without_waiting() -> None:
    clock = Clock()
    admit_waiting(1024, Host([4096]), 512, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == []


def test_waits_until_memory_frees_up() -> None:
    clock = Clock()
    host = Host([600, 700, 4096])
    admit_waiting(1024, host, 512, wait_s=10, poll_s=0.5, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == [0.5, 0.5]


def test_refused_after_the_bounded_wait_with_a_clear_message() -> None:
    clock = Clock()
    with pytest.raises(InfrastructureError) as caught:
        admit_waiting(1024, Host([600]), 512, wait_s=3, poll_s=0.5, clock=clock, sleep=clock.sleep)
    assert "does not fit" in caught.value.message
    assert "waited 3s" in caught.value.message
    assert caught.value.fix
    assert clock.now == pytest.approx(3.0)


def test_never_fits_is_refused_at_once() -> None:
    clock = Clock()
    with pytest.raises(InfrastructureError) as caught:
        admit_waiting(9000, Host([8000], total=8192), 512, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == []
    assert "9000 MiB" in caught.value.message
