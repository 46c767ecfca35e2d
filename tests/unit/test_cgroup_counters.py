"""Cgroup counters are opened once per container and re-read in place; their files are closed
when the container goes, and never more than a bounded number stay open."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.docker_runtime import CgroupCounters

PIDS = ("v1/{id}/pids.events", "v2/{id}/pids.events")
PEAK = ("v1/{id}/memory.peak",)


def counter(root: Path, pattern: str, container: str, text: str) -> Path:
    path = root / pattern.format(id=container)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def open_fds() -> int:
    return sum(1 for _ in Path("/proc/self/fd").iterdir())


@pytest.fixture
def counters(tmp_path: Path) -> CgroupCounters:
    return CgroupCounters(root=tmp_path)


def test_a_counter_is_read_again_in_place_as_it_changes(
    counters: CgroupCounters, tmp_path: Path
) -> None:
    path = counter(tmp_path, PIDS[1], "c1", "max 0\n")  # found under the second layout
    assert counters.read("c1", PIDS, prefix="max ") == 0
    with path.open("r+") as same_file:  # the kernel rewrites the same file
        same_file.write("max 7\n")
    assert counters.read("c1", PIDS, prefix="max ") == 7


def test_a_counter_not_there_yet_is_looked_for_again(
    counters: CgroupCounters, tmp_path: Path
) -> None:
    assert counters.read("c1", PEAK) is None
    counter(tmp_path, PEAK[0], "c1", "4096\n")
    assert counters.read("c1", PEAK) == 4096


def test_forgetting_a_container_closes_its_files(counters: CgroupCounters, tmp_path: Path) -> None:
    counter(tmp_path, PIDS[0], "c1", "max 1\n")
    counter(tmp_path, PEAK[0], "c1", "10\n")
    before = open_fds()
    counters.read("c1", PIDS, prefix="max ")
    counters.read("c1", PEAK)
    assert open_fds() == before + 2
    counters.forget("c1")
    assert open_fds() == before
    counters.forget("c1")  # twice, or never read: nothing to do


def test_no_more_than_the_bound_of_containers_keep_files_open(
    counters: CgroupCounters, tmp_path: Path
) -> None:
    before = open_fds()
    for index in range(CgroupCounters.MAX_CONTAINERS + 10):
        counter(tmp_path, PEAK[0], f"c{index}", f"{index}\n")
        assert counters.read(f"c{index}", PEAK) == index
    assert open_fds() == before + CgroupCounters.MAX_CONTAINERS


def test_an_unparsable_counter_is_none(counters: CgroupCounters, tmp_path: Path) -> None:
    counter(tmp_path, PEAK[0], "c1", "lots\n")
    assert counters.read("c1", PEAK) is None
