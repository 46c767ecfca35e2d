"""Container output -> frames, incrementally and in bounded memory. Pure.

Chunks of (stream, bytes) arrive in any sizes. Lines are split on the newline byte before any
decoding: 0x0A never occurs inside a multi-byte UTF-8 sequence, so a character split across
chunks is reassembled whole (this is the incremental decoder), and each complete line is decoded
once, invalid bytes becoming U+FFFD. A line longer than the frame limit is cut at a character
boundary, marked, and the rest of it discarded as it streams, so memory stays bounded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from .frames import Frame, FrameFactory, encode, script_fields
from .request import loads_strict

StreamName = Literal["stdout", "stderr"]
TRUNCATION_MARK = " …[line truncated]"

# The fast path passes a script's payload bytes through as they are, only in the exact form the
# in-image runtime writes, and only when re-encoding could not change their meaning:
_SPLICE_PREFIXES = {b'{"type":"data","payload":': "data", b'{"type":"result","payload":': "result"}
# ... with no escaped surrogate (the exact path replaces lone ones with U+FFFD).
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


def _not_strict_json(name: str) -> Any:
    msg = f"{name} is not valid JSON"
    raise ValueError(msg)


def _finite_float(text: str) -> float:
    """parse_float for the fast path: a number that overflows to infinity is not strict JSON
    once decoded, so such a line takes the exact path (which reports it)."""
    value = float(text)
    if value - value != 0:
        msg = f"number {text[:20]} is out of range"
        raise ValueError(msg)
    return value


# orjson turns an integer beyond 64 bits into a float where json keeps it exact; nesting this
# deep is left to json's own limits. Either way the payload is parsed again by json.
_ORJSON_FLOAT_FROM_INT = float(2**63)
_ORJSON_MAX_DEPTH = 256


def _strict_payload(raw: memoryview) -> Any:
    """The value of a payload text that must be exactly one strict JSON value, as
    ``json.loads`` with the exact path's rules would give it; ValueError otherwise.

    orjson does the validating parse (strict UTF-8 without encoded surrogates, no BOM, no
    NaN/Infinity, no number that overflows to infinity, nothing after the value: no second
    "type" or "payload" key can hide behind it) at several times json's speed, which is what
    lets frames stream at the attach socket's rate on two cores. Where its value could differ
    from json's, json decides."""
    value = orjson.loads(raw)
    if _json_agrees(value):
        return value
    return json.loads(str(raw, "utf-8"), parse_float=_finite_float, parse_constant=_not_strict_json)


def _json_agrees(value: Any) -> bool:
    """Whether ``json.loads`` of the same text gives ``value``: no float that may have been
    a 64-bit-plus integer, no nesting deeper than json is sure to accept."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            if isinstance(item, float) and abs(item) >= _ORJSON_FLOAT_FROM_INT:
                return False
            continue
        if depth >= _ORJSON_MAX_DEPTH:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True


@dataclass(frozen=True)
class Line:
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

    def feed(self, chunk: bytes) -> Iterator[Line]:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                break
            yield from self._complete(chunk[start:end] if start or end < len(chunk) else chunk)
            start = end + 1
        if start < len(chunk):
            yield from self._partial(chunk[start:] if start else chunk)

    def flush(self) -> Iterator[Line]:
        """The unterminated last line at end of stream."""
        if self._parts and not self._discarding:
            yield Line(b"".join(self._parts))
        self._parts.clear()
        self._size = 0
        self._discarding = False

    def _complete(self, piece: bytes) -> Iterator[Line]:
        if self._discarding:
            self._discarding = False
            return
        if self._parts:
            self._parts.append(piece)
            piece = b"".join(self._parts)
            self._parts.clear()
            self._size = 0
        if len(piece) > self.max_line:
            yield Line(_cut_utf8(piece, self.max_line), truncated=True)
        else:
            yield Line(piece)

    def _partial(self, piece: bytes) -> Iterator[Line]:
        if self._discarding:
            return
        self._parts.append(piece)
        self._size += len(piece)
        if self._size > self.max_line:
            yield Line(_cut_utf8(b"".join(self._parts), self.max_line), truncated=True)
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
        return [self._frame(stream, line) for line in self._splitters[stream].feed(chunk)]

    def flush(self) -> list[Frame]:
        frames: list[Frame] = []
        for stream in ("stdout", "stderr"):
            frames.extend(self._frame(stream, line) for line in self._splitters[stream].flush())
        return frames

    def _frame(self, stream: StreamName, line: Line) -> Frame:
        if stream == "stdout" and not line.truncated:
            frame = self._script_frame(line.data)
            if frame is not None:
                return frame
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
        """The fast path for the runtime's own data/result lines: the payload text is parsed
        once (validating it) and passed through, never re-encoded."""
        type_ = _SPLICE_PREFIXES.get(stripped[:27]) or _SPLICE_PREFIXES.get(stripped[:25])
        if type_ is None or not stripped.endswith(b"}"):
            return None
        start = 27 if type_ == "result" else 25
        # A one-byte find is a memchr, some fifty times faster than finding "\\u" itself; most
        # payloads hold no backslash at all.
        escape = stripped.find(b"\\", start)
        if escape >= 0 and _ESCAPED_SURROGATE.search(stripped, escape):
            return None
        try:
            payload = _strict_payload(memoryview(stripped)[start:-1])
        except (ValueError, RecursionError):
            return None
        frame = self.factory.spliced(type_, payload, stripped)
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
