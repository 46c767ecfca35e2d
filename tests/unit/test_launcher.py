"""The in-container launcher (sandbox/runtime_lib/sandbox_launch.py): its stacked seccomp filter,
installed for real by the host kernel in a child process, the way an image runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

LAUNCHER = Path(__file__).resolve().parents[2] / "sandbox" / "runtime_lib" / "sandbox_launch.py"

# Each probe reports what the kernel said, as an errno name or "ok".
PROBE = textwrap.dedent(
    """
    import ctypes, errno, json, socket, threading
    libc = ctypes.CDLL(None, use_errno=True)

    def raw(number, *args):
        ctypes.set_errno(0)
        ret = libc.syscall(ctypes.c_long(number), *args)
        return "ok" if ret != -1 else errno.errorcode[ctypes.get_errno()]

    def family(af):
        try:
            socket.socket(af, socket.SOCK_STREAM).close()
        except OSError as exc:
            return errno.errorcode[exc.errno]
        return "ok"

    done = []
    threads = [threading.Thread(target=done.append, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({
        # clone3(NULL, 0), 435 on every architecture the filter knows: the filter answers
        # before the kernel would look at the struct.
        "clone3": raw(435, None, ctypes.c_size_t(0)),
        "vsock": family(40),
        "unix": family(socket.AF_UNIX),
        "threads": len(done),
    }))
    """
)


def launched(*command: str, options: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - the host's own interpreter on fixed arguments
        [sys.executable, "-I", "-S", str(LAUNCHER), *options, "--", *command],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture(scope="module")
def probed() -> dict[str, Any]:
    done = launched(sys.executable, "-I", "-c", PROBE)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_clone3_is_answered_not_implemented(probed: dict[str, Any]) -> None:
    # ENOSYS, not EPERM: on ENOSYS libc falls back to clone, whose flags the engine's profile
    # checks; on EPERM (what gVisor answers for the engine's profile) no thread could start.
    assert probed["clone3"] == "ENOSYS"


def test_threads_still_start_under_the_filter(probed: dict[str, Any]) -> None:
    assert probed["threads"] == 4


def test_vsock_is_refused_and_other_families_are_not(probed: dict[str, Any]) -> None:
    assert probed["vsock"] == "EAFNOSUPPORT"
    assert probed["unix"] == "ok"


def test_the_command_is_executed_in_place_with_its_exit_status() -> None:
    done = launched(sys.executable, "-I", "-c", "import sys; sys.exit(7)")
    assert done.returncode == 7


def test_without_a_command_it_refuses_with_usage() -> None:
    done = launched()
    assert done.returncode == 2
    assert "usage" in done.stderr


@pytest.fixture
def pipe(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A named pipe with a reader, as the coordinator makes it: (path, reading fd)."""
    path = tmp_path / "stdout"
    os.mkfifo(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    yield str(path), fd
    os.close(fd)


def test_with_a_stdout_pipe_the_command_writes_its_stdout_there(pipe: tuple[str, int]) -> None:
    path, fd = pipe
    code = "import os, sys; print(os.get_blocking(1)); print('to stderr', file=sys.stderr)"
    done = launched(sys.executable, "-I", "-c", code, options=("--stdout", path))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr == "to stderr\n"
    # A blocking stdout, like any other: the launcher's non-blocking open is its own.
    assert os.read(fd, 1024) == b"True\n"


def test_a_stdout_pipe_without_a_reader_fails_before_the_command_runs(tmp_path: Path) -> None:
    path = tmp_path / "stdout"
    os.mkfifo(path)
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').close()"
    done = launched(sys.executable, "-I", "-c", code, options=("--stdout", str(path)))
    assert done.returncode == 126
    assert f"cannot open the stdout pipe {path}" in done.stderr
    assert not marker.exists()
