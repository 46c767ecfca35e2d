"""How the attach socket is read: a bulk stream in batches, a trickle never held back, every byte
in order whatever the pacing. A real socket pair stands in for the engine's end (no Docker)."""

from __future__ import annotations

import fcntl
import random
import socket
import struct
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox import docker_runtime
from sandbox.docker_runtime import (
    BULK_READ_BYTES,
    ENGINE_WRITE_BYTES,
    Demuxer,
    DockerAttachment,
    batch_bytes,
)


def mux(kind: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", kind, len(data)) + data


def read_all(
    attachment: DockerAttachment, on_piece: Callable[[bytes], None] | None = None
) -> dict[str, bytes]:
    out = {"stdout": b"", "stderr": b""}
    for stream, piece in attachment.chunks():
        out[stream] += piece
        if on_piece is not None:
            on_piece(out["stdout"])
    return out


def test_a_bulk_stream_is_read_in_batches_and_a_quiet_one_is_not(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, engine = pair
    assert batch_bytes() > BULK_READ_BYTES  # this host batches
    bulk = b"".join(mux(1, b"x" * 20_000 + b"\n") for _ in range(8))
    engine.sendall(bulk)  # queued before the first read: that read is a bulk one
    lowat_seen: dict[str, int] = {}
    quiet_went = threading.Event()

    def on_piece(stdout: bytes) -> None:
        lowat = ours.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)
        if stdout.endswith(b"tail\n"):
            lowat_seen["after quiet"] = lowat
        else:
            lowat_seen.setdefault("bulk", lowat)
            if len(stdout) == 8 * 20_001:
                quiet_went.set()

    def engine_side() -> None:
        quiet_went.wait(5)
        time.sleep(0.1)  # quiet for far longer than BATCH_WAIT
        engine.sendall(mux(1, b"tail\n"))
        engine.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=engine_side)
    writer.start()
    out = read_all(DockerAttachment(ours), on_piece)
    writer.join()

    assert out["stdout"] == b"".join(b"x" * 20_000 + b"\n" for _ in range(8)) + b"tail\n"
    assert lowat_seen == {"bulk": batch_bytes(), "after quiet": 1}


def test_a_trickle_after_a_bulk_stream_is_passed_on_while_the_stream_is_open(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, engine = pair
    bulk = b"y" * (BULK_READ_BYTES * 2) + b"\n"
    engine.sendall(mux(1, bulk))
    bulk_read = threading.Event()
    tail_seen = threading.Event()
    closed_at: list[float] = []

    def engine_side() -> None:
        bulk_read.wait(5)
        engine.sendall(mux(1, b"tail\n"))  # far less than a batch: must not wait for more
        tail_seen.wait(5)
        closed_at.append(time.monotonic())
        engine.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=engine_side)
    writer.start()
    seen_at: list[float] = []

    def on_piece(stdout: bytes) -> None:
        if stdout == bulk:
            bulk_read.set()
        if stdout.endswith(b"tail\n") and not seen_at:
            seen_at.append(time.monotonic())
            tail_seen.set()

    read_all(DockerAttachment(ours), on_piece)
    writer.join()
    assert seen_at, "the tail never came"
    assert seen_at[0] <= closed_at[0], "the tail was held until the stream closed"


@pytest.mark.parametrize("seed", range(5))
def test_every_byte_arrives_in_order_whatever_the_pacing(
    pair: tuple[socket.socket, socket.socket], seed: int
) -> None:
    ours, engine = pair
    rng = random.Random(seed)  # noqa: S311 - reproducible pacing, not secrets
    frames = [
        (rng.choice((1, 1, 1, 2)), bytes([97 + i % 26]) * rng.randrange(1, 40_000))
        for i in range(60)
    ]
    data = b"".join(mux(kind, payload) for kind, payload in frames)

    def engine_side() -> None:
        pos = 0
        while pos < len(data):
            step = rng.choice((1, 7, 500, 20_000, 70_000))
            engine.sendall(data[pos : pos + step])
            pos += step
            if rng.random() < 0.1:
                time.sleep(0.004)  # sometimes longer than BATCH_WAIT
        engine.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=engine_side)
    writer.start()
    out = read_all(DockerAttachment(ours))
    writer.join()
    assert out["stdout"] == b"".join(p for k, p in frames if k == 1)
    assert out["stderr"] == b"".join(p for k, p in frames if k == 2)


def _queued_until_the_sender_blocks(pair: tuple[socket.socket, socket.socket]) -> int:
    """How many stream bytes the engine's end queues, in its largest writes, before a write
    would block: what a read waiting for a batch can count on."""
    ours, engine = pair
    engine.setblocking(False)
    piece = mux(1, b"q" * ENGINE_WRITE_BYTES)
    try:
        while True:
            engine.send(piece)
    except BlockingIOError:
        pass
    queued = fcntl.ioctl(ours.fileno(), termios.FIONREAD, b"\0\0\0\0")
    return int.from_bytes(queued, sys.byteorder)


def test_a_batch_is_about_half_of_what_the_engine_can_queue(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    capacity = _queued_until_the_sender_blocks(pair)
    # Room for two more of the engine's writes while a read waits for its batch, so the
    # engine never blocks on a reader that is waiting...
    assert batch_bytes() + 2 * ENGINE_WRITE_BYTES <= capacity
    # ...and a batch large enough to save most wake-ups and trips through the frame path.
    assert batch_bytes() >= capacity // 2 - ENGINE_WRITE_BYTES


@pytest.mark.parametrize("wmem", [65_536, 98_304, 212_992, 4_194_304])
def test_a_small_send_buffer_still_leaves_the_engine_two_writes_of_room(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, wmem: int
) -> None:
    setting = tmp_path / "wmem_default"
    setting.write_text(f"{wmem}\n")
    monkeypatch.setattr(docker_runtime, "_WMEM_DEFAULT", setting)
    batch_bytes.cache_clear()
    try:
        batch = batch_bytes()
    finally:
        batch_bytes.cache_clear()
    assert batch == 0 or batch + 2 * ENGINE_WRITE_BYTES <= wmem
    assert 0 <= batch <= min(128 * 1024, wmem // 2)


def test_no_batching_where_the_send_buffer_size_is_unknown(
    monkeypatch: pytest.MonkeyPatch, pair: tuple[socket.socket, socket.socket]
) -> None:
    monkeypatch.setattr(docker_runtime, "_WMEM_DEFAULT", docker_runtime.Path("/nonexistent"))
    batch_bytes.cache_clear()
    try:
        assert batch_bytes() == 0
        lowats = _lowats_while_reading_a_bulk_stream(pair)
    finally:
        batch_bytes.cache_clear()
    assert set(lowats) == {1}


def _lowats_while_reading_a_bulk_stream(pair: tuple[socket.socket, socket.socket]) -> list[int]:
    ours, engine = pair
    engine.sendall(mux(1, b"z" * (BULK_READ_BYTES * 2)))
    engine.shutdown(socket.SHUT_WR)
    lowats: list[int] = []
    out = read_all(
        DockerAttachment(ours),
        lambda _: lowats.append(ours.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)),
    )
    assert out["stdout"] == b"z" * (BULK_READ_BYTES * 2)
    return lowats


def test_the_frames_of_one_read_come_out_as_one_piece_per_stream_run() -> None:
    read = mux(1, b"a\n") + mux(1, b"b") + mux(1, b"c\n") + mux(2, b"warn\n") + mux(1, b"d\n")
    assert Demuxer().feed(read) == [
        ("stdout", b"a\nbc\n"),
        ("stderr", b"warn\n"),
        ("stdout", b"d\n"),
    ]
