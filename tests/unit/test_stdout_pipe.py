"""A run's stdout pipe (sandbox/stdout_pipe.py) and how an attachment reads it beside the attach
socket. A real named pipe, and a real socket pair standing in for the engine's end (no Docker)."""

from __future__ import annotations

import fcntl
import os
import socket
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import docker_runtime
from sandbox.docker_runtime import DockerAttachment
from sandbox.errors import InfrastructureError
from sandbox.spec import Owner
from sandbox.stdout_pipe import DIR_PREFIX, PIPE_BYTES, StdoutPipe, leftovers, remove

ME = Owner(pid=4242, start_time=1234.5, host="build-host")


def mux(kind: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", kind, len(data)) + data


@pytest.fixture
def pipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StdoutPipe]:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made = StdoutPipe.create(ME)
    yield made
    made.close()


def writer(pipe: StdoutPipe) -> int:
    """The tool's end, opened as the launcher opens it."""
    return os.open(pipe.path, os.O_WRONLY)


def read_all(attachment: DockerAttachment) -> dict[str, bytes]:
    out = {"stdout": b"", "stderr": b""}
    for stream, piece in attachment.chunks():
        out[stream] += piece
    return out


def later(seconds: float, action: object) -> threading.Thread:
    def run() -> None:
        time.sleep(seconds)
        action()  # type: ignore[operator]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_the_pipe_is_a_fifo_the_tool_may_write_and_never_read(pipe: StdoutPipe) -> None:
    mode = Path(pipe.path).stat().st_mode
    assert stat.S_ISFIFO(mode)
    assert stat.S_IMODE(mode) == 0o622  # any uid writes; only the owner reads
    assert stat.S_IMODE(pipe.directory.stat().st_mode) == 0o700
    assert not os.get_blocking(pipe.fd)
    assert fcntl.fcntl(pipe.fd, fcntl.F_GETPIPE_SZ) == PIPE_BYTES


def test_close_removes_the_pipe_and_its_directory_once(pipe: StdoutPipe) -> None:
    pipe.close()
    assert not pipe.directory.exists()
    assert pipe.fd == -1
    pipe.close()  # idempotent: every ending of a run closes it


def test_a_pipe_that_cannot_be_made_names_where_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    with pytest.raises(InfrastructureError) as caught:
        StdoutPipe.create(ME)
    assert str(tmp_path / "missing") in str(caught.value)
    assert "TMPDIR" in caught.value.fix


def test_stdout_comes_from_the_pipe_and_stderr_from_the_socket(
    pipe: StdoutPipe, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, engine = pair
    tool = writer(pipe)
    stdout = b"".join(b'{"n":%d}\n' % i for i in range(50_000))  # several pipefuls

    def container() -> None:
        for start in range(0, len(stdout), 60_000):
            os.write(tool, stdout[start : start + 60_000])
            engine.sendall(mux(2, b"err %d\n" % start))
        os.close(tool)
        engine.close()

    thread = later(0, container)
    got = read_all(DockerAttachment(ours, pipe=pipe.fd))
    thread.join()
    assert got["stdout"] == stdout
    assert got["stderr"] == b"".join(b"err %d\n" % s for s in range(0, len(stdout), 60_000))


def test_stdout_still_in_the_pipe_when_the_socket_ends_is_read(
    pipe: StdoutPipe, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, engine = pair
    tool = writer(pipe)
    os.write(tool, b"first\n")
    engine.sendall(mux(2, b"bye\n"))
    engine.close()  # the container's stdio closed while its last writer is still going

    def last_words() -> None:
        os.write(tool, b"last\n")
        os.close(tool)

    later(0.2, last_words)
    got = read_all(DockerAttachment(ours, pipe=pipe.fd))
    assert got == {"stdout": b"first\nlast\n", "stderr": b"bye\n"}


def test_a_pipe_no_writer_ever_opened_ends_after_the_drain_time(
    pipe: StdoutPipe, pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, engine = pair
    monkeypatch.setattr(docker_runtime, "PIPE_DRAIN_S", 0.3)
    engine.sendall(mux(2, b"launcher failed\n"))
    engine.close()
    began = time.monotonic()
    got = read_all(DockerAttachment(ours, pipe=pipe.fd))
    assert got == {"stdout": b"", "stderr": b"launcher failed\n"}
    assert 0.3 <= time.monotonic() - began < 5


def test_stderr_goes_on_after_the_tool_closed_its_stdout(
    pipe: StdoutPipe, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, engine = pair
    tool = writer(pipe)
    os.write(tool, b"out\n")
    os.close(tool)  # stdout ends first: the reader stops polling it and keeps reading stderr

    def more_stderr() -> None:
        engine.sendall(mux(2, b"still here\n"))
        engine.close()

    later(0.2, more_stderr)
    got = read_all(DockerAttachment(ours, pipe=pipe.fd))
    assert got == {"stdout": b"out\n", "stderr": b"still here\n"}


@pytest.mark.parametrize("socket_ended", [False, True], ids=["streaming", "draining"])
def test_close_ends_the_reading_whatever_the_pipe_holds(
    pipe: StdoutPipe,
    pair: tuple[socket.socket, socket.socket],
    monkeypatch: pytest.MonkeyPatch,
    socket_ended: bool,
) -> None:
    # The watchdog's last resort (the engine did not end the stream after a kill): a writer
    # that never closes must not keep the reader, before or after the socket's end.
    ours, engine = pair
    monkeypatch.setattr(docker_runtime, "PIPE_DRAIN_S", 60.0)
    tool = writer(pipe)
    if socket_ended:
        engine.close()
    attachment = DockerAttachment(ours, pipe=pipe.fd)
    later(0.2, attachment.close)
    began = time.monotonic()
    assert read_all(attachment) == {"stdout": b"", "stderr": b""}
    assert time.monotonic() - began < 5
    os.close(tool)
    engine.close()


def test_a_pipe_directory_is_named_after_its_owner(pipe: StdoutPipe) -> None:
    assert pipe.directory.name.startswith(f"{DIR_PREFIX}4242-1234.500-build-host-")


def test_leftovers_are_this_users_pipe_directories_with_their_owners(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    other = Owner(pid=7, start_time=5.25, host="other-host")
    made = [StdoutPipe.create(ME), StdoutPipe.create(other)]
    (tmp_path / f"{DIR_PREFIX}notes").mkdir()  # not named after an owner
    (tmp_path / f"{DIR_PREFIX}8-6.000-h-x").write_text("")  # not a directory
    found = sorted(leftovers(), key=lambda item: item[1].pid)
    assert found == [(made[1].directory, other), (made[0].directory, ME)]
    assert remove(made[1].directory)
    assert not made[1].directory.exists()
    made[0].close()
