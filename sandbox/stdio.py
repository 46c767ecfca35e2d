"""The server's byte streams: newline-delimited messages in with a size cap, and one writer
that owns stdout behind a buffer bounded in bytes (the backpressure of ``sandbox serve``).
"""

from __future__ import annotations

import collections
import fcntl
import os
import stat
import sys
import termios
import threading
from collections.abc import Callable, Iterator
from typing import BinaryIO

from .log import logger

WRITE_BUFFER_BYTES = 8 * 1024 * 1024
# A whole line, or a part of one.
Piece = bytes | memoryview
# What waits goes out in one gathered write (writev) of up to this many bytes and pieces.
WRITE_BATCH_BYTES = 1024 * 1024
WRITE_BATCH_PIECES = 512
# Room a pipe's partly filled pages may take beyond the bytes queued in it.
PIPE_SLACK_BYTES = 4 * 4096


def read_lines(stream: BinaryIO, max_bytes: int, chunk: int = 64 * 1024) -> Iterator[bytes | None]:
    """Lines without their newline, until EOF; ``None`` stands for a line longer than
    ``max_bytes``, whose bytes are skipped as they arrive (memory stays bounded)."""
    buf = bytearray()
    skipping = False
    while data := stream.read(chunk):
        start = 0
        while (end := data.find(b"\n", start)) != -1:
            if not skipping:
                buf += data[start:end]
                yield None if len(buf) > max_bytes else bytes(buf)
            buf.clear()
            skipping = False
            start = end + 1
        if not skipping:
            buf += data[start:]
            if len(buf) > max_bytes:
                yield None
                buf.clear()
                skipping = True
    if buf and not skipping:
        yield bytes(buf)


class LineWriter:
    """The output stream's one writer at a time, fed through a buffer bounded in bytes.

    ``put`` blocks while the buffer is full, so a slow reader slows the producers down instead
    of growing memory. Once the stream breaks, or the reader is abandoned at shutdown, lines
    are dropped so that no producer blocks forever.

    When nothing waits, nobody is writing and the output is a pipe with room for the lines,
    the producer writes them itself: handing them to the writer thread costs a wake-up and two
    hand-overs of the interpreter lock, about a third of a large stream's CPU in ``serve``. A
    write into a pipe with room never blocks, so a producer still never waits on a stuck
    reader; everything else goes through the writer thread.
    """

    def __init__(
        self,
        out: BinaryIO,
        *,
        max_bytes: int = WRITE_BUFFER_BYTES,
        on_broken: Callable[[], None] = lambda: None,
    ) -> None:
        self._out = out
        self._max = max_bytes
        self._on_broken = on_broken
        # Pieces of lines (bytes or views), in order: a line may come in several.
        self._lines: collections.deque[Piece] = collections.deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self._dropping = False
        self._closing = False
        self._writing = False  # a batch is being written, by the writer thread or a producer
        self._pipe_bytes = _pipe_capacity(out)
        self._thread = threading.Thread(target=self._loop, name="serve-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, line: bytes) -> None:
        self.put_many([line])

    def put_many(self, pieces: list[Piece]) -> None:
        """Queue ``pieces`` (whole lines, or lines in parts) in order, as one producer's batch:
        one wake-up of the writer, and no copy to join the parts."""
        size = sum(len(piece) for piece in pieces)
        with self._cond:
            # An empty buffer always takes a batch, however long, so nothing waits forever.
            while not self._dropping and self._bytes and self._bytes + size > self._max:
                self._cond.wait()
            if self._dropping:
                return
            if self._lines or self._writing or not self._room_for(size):
                self._lines.extend(pieces)
                self._bytes += size
                self._cond.notify_all()
                return
            self._writing = True
        self._write_and_yield(pieces)

    def _room_for(self, size: int) -> bool:
        """Whether ``size`` bytes fit in the output pipe now (only one writer at a time, and the
        reader only empties it, so they still fit when written)."""
        if self._pipe_bytes is None:
            return False
        try:
            queued = fcntl.ioctl(self._out.fileno(), termios.FIONREAD, b"\0\0\0\0")
        except (OSError, ValueError):
            return False
        # A pipe holds whole pages: partly filled ones at its two ends take room the byte
        # count does not show.
        return size + int.from_bytes(queued, sys.byteorder) + PIPE_SLACK_BYTES <= self._pipe_bytes

    def close(self, timeout_s: float) -> None:
        """Write what is buffered, then stop; give up on a reader stuck for ``timeout_s``."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.warning("the client stopped reading; dropping unwritten messages")
            self.abandon()

    def abandon(self) -> None:
        with self._cond:
            self._dropping = True
            self._lines.clear()
            self._bytes = 0
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._lines and not self._writing):
                    if self._dropping or (self._closing and not self._lines and not self._writing):
                        return
                    self._cond.wait()
                # What is waiting goes out together: a run streaming small frames puts
                # thousands of lines a second, and a write (and a wake-up of the reader) each
                # would cost more than making them.
                pieces = [self._lines.popleft()]
                size = len(pieces[0])
                while self._lines and size < WRITE_BATCH_BYTES and len(pieces) < WRITE_BATCH_PIECES:
                    piece = self._lines.popleft()
                    pieces.append(piece)
                    size += len(piece)
                self._bytes -= size
                self._writing = True
                self._cond.notify_all()
            self._write_and_yield(pieces)

    def _write_and_yield(self, pieces: list[Piece]) -> None:
        """Write a batch taken with ``_writing`` set, then let the next writer go."""
        try:
            self._write(pieces)
        finally:
            with self._cond:
                self._writing = False
                # Only the writer thread waits for the end of a write, and only when lines
                # wait or the writer closes; waking it for nothing cost serve a context switch
                # and a hand-over of the interpreter lock per read of a stream.
                if self._lines or self._closing:
                    self._cond.notify_all()

    def _write(self, pieces: list[Piece]) -> None:
        try:
            self._out.flush()
            write_all(self._out.fileno(), pieces)
        except (OSError, ValueError) as exc:
            if not self._dropping:
                logger.warning("stdout is closed ({}); dropping further messages", exc)
                self.abandon()
                self._on_broken()


def _pipe_capacity(out: BinaryIO) -> int | None:
    """The size of the pipe ``out`` writes to; None when it is not a pipe."""
    try:
        fd = out.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return None
        return int(fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ))
    except (OSError, ValueError, AttributeError):
        return None


def write_all(fd: int, pieces: list[Piece]) -> None:
    """Write ``pieces`` in order with gathered writes, however the kernel splits them."""
    views = [memoryview(piece) for piece in pieces]
    first = 0
    while first < len(views):
        written = os.writev(fd, views[first : first + WRITE_BATCH_PIECES])
        while first < len(views) and written >= len(views[first]):
            written -= len(views[first])
            first += 1
        if written:
            views[first] = views[first][written:]
