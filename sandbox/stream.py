"""Container output -> frames, incrementally and in bounded memory. Pure.

Chunks of (stream, bytes) arrive in any sizes. Lines are split on the newline byte before any
decoding: 0x0A never occurs inside a multi-byte UTF-8 sequence, so a character split across
chunks is reassembled whole (this is the incremental decoder), and each complete line is decoded
once, invalid bytes becoming U+FFFD. A line longer than the frame limit is cut at a character
boundary, marked, and the rest of it discarded as it streams, so memory stays bounded.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from .frames import Frame, FrameFactory, encode, script_fields
from .request import loads_strict

StreamName = Literal["stdout", "stderr"]
TRUNCATION_MARK = " …[line truncated]"

# The fast path passes a script's payload bytes through as they are, only in the exact form the
# in-image runtime writes:
_DATA_PREFIX = b'{"type":"data","payload":'
_RESULT_PREFIX = b'{"type":"result","payload":'
# ... with the payload starting at its value: simdjson skips a byte order mark there, which
# would then travel inside the frame.
_VALUE_START = frozenset(b'{["-0123456789tfn')


class PayloadChecker:
    """Whether a payload text is exactly one strict JSON value, safe to pass on as it is,
    without building that value.

    simdjson validates at several GB/s where decoding (json, orjson) builds every object and
    string: 5-6x slower on record-shaped data, and the one cost that grew with every byte a
    run streams. It refuses what strict JSON refuses (invalid UTF-8, lone surrogates escaped or
    encoded, NaN/Infinity, numbers that overflow to infinity, control characters, anything
    after the value, so no second "type" or "payload" key can hide behind it), and also what
    it cannot vouch for (integers beyond 64 bits, nesting deeper than 1024): those lines take
    the exact path, where json decides. (A payload nested nearly 1024 deep passes; json, whose
    limit is the interpreter's recursion limit, would not decode it from Python.) One checker
    per run: a parser is not thread-safe."""

    def __init__(self) -> None:
        import simdjson  # here, not at import: `sandbox run` loads it while the container starts

        self._parser = simdjson.Parser()

    def __call__(self, text: memoryview) -> bool:
        if not text or text[0] not in _VALUE_START:
            return False
        try:
            # The document is dropped at once: the parser can only be reused once it is gone.
            self._parser.parse(text)
        except (ValueError, RuntimeError):  # simdjson's errors, UnicodeDecodeError included
            return False
        return True


class Line(NamedTuple):
    data: bytes
    truncated: bool = False


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
    """Splits one stream into lines of at most ``max_line`` bytes (newline excluded).

    The pieces of a line that spans chunks are kept as they came and joined once."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._parts: list[bytes] = []
        self._size = 0
        self._discarding = False

    @property
    def buffered(self) -> int:
        """Bytes held for a line not yet complete (at most ``max_line``)."""
        return self._size

    def feed(self, chunk: bytes) -> list[Line]:
        lines: list[Line] = []
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
            lines.append(Line(piece) if len(piece) <= limit else self._line(piece))
            start = end + 1
        if start < len(chunk):
            self._partial(chunk[start:], lines)
        return lines

    def flush(self) -> list[Line]:
        """The unterminated last line at end of stream."""
        lines = [Line(b"".join(self._parts))] if self._parts and not self._discarding else []
        self._parts.clear()
        self._size = 0
        self._discarding = False
        return lines

    def _line(self, piece: bytes) -> Line:
        if len(piece) > self.max_line:
            return Line(_cut_utf8(piece, self.max_line), truncated=True)
        return Line(piece)

    def _complete(self, piece: bytes, lines: list[Line]) -> None:
        """The end of a line whose start came in earlier chunks."""
        if self._discarding:
            self._discarding = False
            return
        self._parts.append(piece)
        whole = b"".join(self._parts)
        self._parts.clear()
        self._size = 0
        lines.append(self._line(whole))

    def _partial(self, piece: bytes, lines: list[Line]) -> None:
        if self._discarding:
            return
        self._parts.append(piece)
        self._size += len(piece)
        if self._size > self.max_line:
            lines.append(Line(_cut_utf8(b"".join(self._parts), self.max_line), truncated=True))
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
        self._payload_ok = PayloadChecker()

    @property
    def over_cap(self) -> bool:
        return self.total_bytes > self.stream_cap

    def feed(self, stream: StreamName, chunk: bytes) -> list[Frame]:
        """Frames for one chunk; stops producing once the stream cap is passed."""
        if self.over_cap:
            return []
        self.total_bytes += len(chunk)
        if self.over_cap:
            chunk = chunk[: len(chunk) - (self.total_bytes - self.stream_cap)]
        frames: list[Frame] = []
        for line in self._splitters[stream].feed(chunk):
            # The common case first: a whole stdout line that is one of the script's frames.
            # (`is None`, not truthiness: asking a spliced frame its length decodes it.)
            frame = None if line.truncated or stream != "stdout" else self._script_frame(line.data)
            frames.append(self._frame(stream, line) if frame is None else frame)
        return frames

    def flush(self) -> list[Frame]:
        frames: list[Frame] = []
        for stream in ("stdout", "stderr"):
            for line in self._splitters[stream].flush():
                frame = None if stream != "stdout" else self._script_frame(line.data)
                frames.append(self._frame(stream, line) if frame is None else frame)
        return frames

    def _frame(self, stream: StreamName, line: Line) -> Frame:
        """A line that is not one of the script's frames (``_script_frame`` said None)."""
        if stream == "stdout" and line.truncated and line.data.lstrip().startswith(b"{"):
            return self.factory.error(
                "ProtocolError",
                f"a stdout line longer than {self.frame_max} bytes was cut and dropped; large "
                "data belongs in files under /output",
                details={
                    "limit": self.frame_max,
                    "head": line.data[:200].decode("utf-8", "replace"),
                },
            )
        text = line.data.decode("utf-8", "replace")
        return self.fitting_log(stream, text + TRUNCATION_MARK if line.truncated else text)

    def _spliced_frame(self, stripped: bytes) -> Frame | None:
        """The fast path for the runtime's own data/result lines: the payload text is
        validated (never decoded) and passed through, never re-encoded."""
        if stripped.startswith(_DATA_PREFIX):
            type_, start = "data", len(_DATA_PREFIX)
        elif stripped.startswith(_RESULT_PREFIX):
            type_, start = "result", len(_RESULT_PREFIX)
        else:
            return None
        if not stripped.endswith(b"}") or not self._payload_ok(memoryview(stripped)[start:-1]):
            return None
        frame = self.factory.spliced(type_, stripped, start)
        if frame.line is not None and len(frame.line) > self.frame_max:
            return self._oversized(frame, type_, ["payload"], len(frame.line))
        return frame

    def _script_frame(self, data: bytes) -> Frame | None:
        # The runtime's own lines carry no surrounding blanks: spare them the copy of strip().
        stripped = data if data[:1] == b"{" and data[-1:] == b"}" else data.strip()
        if not stripped.startswith(b"{"):
            return None
        spliced = self._spliced_frame(stripped)
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
        while len(encode(frame)) > self.frame_max:
            text = text[: max(0, len(text) // 2)]
            frame["line"] = text + TRUNCATION_MARK
        return frame
