"""Container output -> frames, incrementally and in bounded memory. Pure.

Chunks of (stream, bytes) arrive in any sizes. Lines are split on the newline byte before any
decoding: 0x0A never occurs inside a multi-byte UTF-8 sequence, so a character split across
chunks is reassembled whole (this is the incremental decoder), and each complete line is decoded
once, invalid bytes becoming U+FFFD. A line longer than the frame limit is cut at a character
boundary, marked, and the rest of it discarded as it streams, so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from .frames import Frame, FrameFactory, encode, script_fields, sealed, stamp
from .request import loads_strict

StreamName = Literal["stdout", "stderr"]
TRUNCATION_MARK = " …[line truncated]"
# Frames per batch at most: a batch is built whole before it is passed on, and one read of
# short lines (a 256 KiB read of bare newlines is 262,144 log frames) must not be.
MAX_BATCH_FRAMES = 4096

# The fast path passes a script's lines through as they are, only in the exact form the
# in-image runtime writes.
_DATA_PREFIX = b'{"type":"data","payload":'
_RESULT_PREFIX = b'{"type":"result","payload":'


class LineChecker:
    """Whether a line that starts ``{"type":"data","payload":`` (or ``result``) and ends with
    ``}`` is exactly that two-key object with a strict JSON payload: safe to pass on as it is,
    without building its value.

    simdjson validates at several GB/s where decoding (json, orjson) builds every object and
    string: 5-6x slower on record-shaped data, and the one cost that grew with every byte a run
    streams. It refuses what strict JSON refuses (invalid UTF-8, lone surrogates escaped or
    encoded, NaN/Infinity, numbers that overflow to infinity, control characters, anything
    after the object), and also what it cannot vouch for (integers beyond 64 bits, nesting
    deeper than 1024): those lines take the exact path, where json decides. Counting the keys
    (duplicates included) catches a second "type" or "payload" and any other key. (A payload
    nested nearly 1024 deep passes; json, whose limit is the interpreter's recursion limit,
    would not decode it from Python.) One checker per run: a parser is not thread-safe."""

    def __init__(self) -> None:
        import simdjson  # here, not at import: `sandbox run` loads it while the container starts

        self._parser = simdjson.Parser()
        self._object = simdjson.Object

    def __call__(self, line: bytes) -> bool:
        try:
            # Dropped on return: the parser can only be reused once its document is gone.
            document = self._parser.parse(line)
        except (ValueError, RuntimeError):  # simdjson's errors, UnicodeDecodeError included
            return False
        return isinstance(document, self._object) and len(document) == 2


class Cut(bytes):
    """A line cut at the line limit; the rest of it was dropped."""


def _cut_utf8(data: bytes, limit: int) -> bytes:
    """At most ``limit`` bytes of ``data``, not ending inside a UTF-8 sequence."""
    cut = data[:limit]
    for back in range(1, min(4, len(cut)) + 1):
        byte = cut[-back]
        if byte < 0x80:
            return cut
        if byte >= 0xC0:  # lead byte: is its sequence complete?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return cut if back >= need else cut[:-back]
    return cut


class LineSplitter:
    """Splits one stream into lines of at most ``max_line`` bytes (newline excluded); a longer
    one comes out ``Cut``. The pieces of a line that spans chunks are kept as they came and
    joined once."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._parts: list[bytes] = []
        self._size = 0
        self._discarding = False

    @property
    def buffered(self) -> int:
        """Bytes held for a line not yet complete (at most ``max_line``)."""
        return self._size

    def feed(self, chunk: bytes) -> list[bytes]:
        lines: list[bytes] = []
        end = chunk.find(b"\n")  # a one-byte find is a memchr; bytes.split walks byte by byte
        if end < 0:
            if chunk:
                self._partial(chunk, lines)
            return lines
        first = chunk[:end]
        if self._parts or self._discarding:
            self._complete(first, lines)
        else:
            lines.append(self._line(first))
        limit = self.max_line
        find = chunk.find
        start = end + 1
        while (end := find(b"\n", start)) >= 0:
            piece = chunk[start:end]
            lines.append(piece if len(piece) <= limit else self._line(piece))
            start = end + 1
        if start < len(chunk):
            self._partial(chunk[start:], lines)
        return lines

    def flush(self) -> list[bytes]:
        """The unterminated last line at end of stream."""
        lines = [b"".join(self._parts)] if self._parts and not self._discarding else []
        self._parts.clear()
        self._size = 0
        self._discarding = False
        return lines

    def _line(self, piece: bytes) -> bytes:
        return Cut(_cut_utf8(piece, self.max_line)) if len(piece) > self.max_line else piece

    def _complete(self, piece: bytes, lines: list[bytes]) -> None:
        """The end of a line whose start came in earlier chunks."""
        if self._discarding:
            self._discarding = False
            return
        self._parts.append(piece)
        whole = b"".join(self._parts)
        self._parts.clear()
        self._size = 0
        lines.append(self._line(whole))

    def _partial(self, piece: bytes, lines: list[bytes]) -> None:
        if self._discarding:
            return
        self._parts.append(piece)
        self._size += len(piece)
        if self._size > self.max_line:
            lines.append(Cut(_cut_utf8(b"".join(self._parts), self.max_line)))
            self._parts.clear()
            self._size = 0
            self._discarding = True


class FrameAssembler:
    """Turns one run's container output into frames and counts it against the stream cap."""

    def __init__(self, factory: FrameFactory, *, frame_max: int, stream_cap: int) -> None:
        self.factory = factory
        self.frame_max = frame_max
        self.stream_cap = stream_cap
        self.total_bytes = 0
        # Room for the envelope and JSON escaping of a log line.
        line_max = max(1024, frame_max - 512)
        self._splitters = {"stdout": LineSplitter(line_max), "stderr": LineSplitter(line_max)}
        self._line_ok = LineChecker()

    @property
    def over_cap(self) -> bool:
        return self.total_bytes > self.stream_cap

    def feed(self, stream: StreamName, chunk: bytes) -> list[Frame]:
        """Frames for one chunk; stops producing once the stream cap is passed."""
        return [frame for batch in self.batches(stream, chunk) for frame in batch]

    def batches(
        self, stream: StreamName, chunk: bytes, most: int = MAX_BATCH_FRAMES
    ) -> Iterator[list[Frame]]:
        """``feed``'s frames in batches of at most ``most``, each built when it is asked for."""
        if self.over_cap:
            return
        self.total_bytes += len(chunk)
        if self.over_cap:
            chunk = chunk[: len(chunk) - (self.total_bytes - self.stream_cap)]
        lines = self._splitters[stream].feed(chunk)
        if len(lines) <= most:
            if lines:
                yield self._frames(stream, lines)
            return
        for start in range(0, len(lines), most):
            yield self._frames(stream, lines[start : start + most])

    def _frames(self, stream: StreamName, lines: list[bytes]) -> list[Frame]:
        if stream != "stdout":
            return [self._other(stream, line) for line in lines]
        now = stamp()  # every line of one read arrived at the same moment
        frames: list[Frame] = []
        for line in lines:
            # The common case first: a whole line, as the runtime writes it. (`is None`, not
            # truthiness: asking a spliced frame its length decodes its payload.)
            frame = self._spliced(line, now) if line.__class__ is bytes else None
            if frame is None:
                frame = self._other(stream, line)
                # That frame was stamped as it was made: the read's later lines may not go
                # back before it.
                now = stamp()
            frames.append(frame)
        return frames

    def flush(self) -> list[Frame]:
        return [
            self._other(stream, line)
            for stream in ("stdout", "stderr")
            for line in self._splitters[stream].flush()
        ]

    def _spliced(self, line: bytes, now: tuple[str, bytes]) -> Frame | None:
        """The fast path for the runtime's own data/result lines: validated (the payload never
        decoded) and passed through, never re-encoded."""
        if not line.endswith(b"}"):
            return None
        if line.startswith(_DATA_PREFIX):
            type_ = "data"
        elif line.startswith(_RESULT_PREFIX):
            type_ = "result"
        else:
            return None
        if not self._line_ok(line):
            return None
        frame = self.factory.spliced(type_, line, now)
        if frame.line is not None and len(frame.line) > self.frame_max:
            return self._oversized(frame, type_, ["payload"], len(frame.line))
        return frame

    def _other(self, stream: StreamName, line: bytes) -> Frame:
        """A line the fast path did not take: a script frame in another form, or a log line."""
        cut = isinstance(line, Cut)
        if stream == "stdout" and not cut:
            frame = self._script_frame(line)
            if frame is not None:
                return frame
        if stream == "stdout" and cut and line.lstrip().startswith(b"{"):
            limit = self._splitters["stdout"].max_line
            return self.factory.error(
                "ProtocolError",
                f"a stdout line longer than {limit} bytes (the {self.frame_max}-byte frame "
                "limit less room for the envelope) was cut and dropped; large data belongs in "
                "files under /output",
                details={"limit": limit, "head": line[:200].decode("utf-8", "replace")},
            )
        text = line.decode("utf-8", "replace")
        return self.fitting_log(stream, text + TRUNCATION_MARK if cut else text)

    def _script_frame(self, data: bytes) -> Frame | None:
        stripped = data.strip()
        if not stripped.startswith(b"{"):
            return None
        if stripped is not data:
            spliced = self._spliced(stripped, stamp())
            if spliced is not None:
                return spliced
        try:
            obj = loads_strict(stripped)
        except (ValueError, RecursionError):
            return None
        accepted = script_fields(obj)
        if accepted is None:
            return None
        type_, fields = accepted
        frame = self.factory.make(type_, **fields)
        try:
            size = len(encode(frame))
        except (ValueError, RecursionError):
            size = self.frame_max + 1
        if size > self.frame_max:
            return self._oversized(frame, type_, list(fields), size)
        return frame

    def _oversized(self, frame: Frame, type_: str, fields: list[str], size: int) -> Frame:
        """Same seq, new content: the oversized frame is replaced, never split or dropped."""
        for key in fields:
            del frame[key]
        frame["type"] = "error"
        frame["error"] = {
            "kind": "ProtocolError",
            "message": f"a {type_} frame of {size} bytes exceeds the {self.frame_max}-byte "
            "line limit; large data belongs in files under /output",
            "traceback": [],
            "details": {"bytes": size, "limit": self.frame_max},
        }
        return frame

    def fitting_log(self, stream: StreamName, text: str) -> Frame:
        """A log frame, its text shortened until the encoded frame fits the line limit."""
        frame = self.factory.log(stream, text)
        line = encode(frame)
        while len(line) > self.frame_max:
            text = text[: max(0, len(text) // 2)]
            frame["line"] = text + TRUNCATION_MARK
            line = encode(frame)
        return sealed(frame, line)
