"""Container output to frames: line splitting, UTF-8, caps, and what a script may send."""

from __future__ import annotations

import json

import pytest

from sandbox.frames import FrameFactory, encode, script_fields
from sandbox.stream import TRUNCATION_MARK, Cut, FrameAssembler, LineSplitter, _cut_utf8


def assembler(frame_max: int = 4096, cap: int = 10**9) -> FrameAssembler:
    return FrameAssembler(FrameFactory("r"), frame_max=frame_max, stream_cap=cap)


def test_lines_split_across_chunks_are_joined() -> None:
    splitter = LineSplitter(100)
    lines = [*splitter.feed(b"ab"), *splitter.feed(b"c\nde"), *splitter.feed(b"f\n")]
    assert lines == [b"abc", b"def"]


def test_unterminated_last_line_is_flushed_at_eof() -> None:
    splitter = LineSplitter(100)
    assert list(splitter.feed(b"tail")) == []
    assert splitter.flush() == [b"tail"]


def test_giant_line_is_cut_once_and_the_rest_discarded_in_bounded_memory() -> None:
    splitter = LineSplitter(10)
    out = []
    for _ in range(1000):
        out += list(splitter.feed(b"z" * 1000))
    out += list(splitter.feed(b"\nnext\n"))
    assert [(line, isinstance(line, Cut)) for line in out] == [(b"z" * 10, True), (b"next", False)]
    assert splitter.buffered == 0


@pytest.mark.parametrize("text", ["héllo", "✓✓✓", "😀x"])
def test_cut_never_splits_a_character(text: str) -> None:
    data = text.encode()
    for limit in range(len(data) + 1):
        data[:limit]  # noqa: B018
        _cut_utf8(data, limit).decode("utf-8")


def test_invalid_utf8_becomes_replacement_characters() -> None:
    frames = assembler().feed("stdout", b"bad \xff bytes\n")
    assert frames[0]["line"] == "bad \ufffd bytes"


def test_lone_surrogate_in_a_frame_is_encoded_as_valid_utf8() -> None:
    frames = assembler().feed("stdout", b'{"type":"data","payload":"\\ud800x"}\n')
    assert encode(frames[0]).decode("utf-8")


def test_nan_in_a_frame_makes_it_a_log_line_not_invalid_json() -> None:
    frames = assembler().feed("stdout", b'{"type":"data","payload":NaN}\n')
    assert frames[0]["type"] == "log"
    json.loads(encode(frames[0]), parse_constant=lambda c: pytest.fail(c))


def test_deep_nesting_does_not_crash() -> None:
    frames = assembler(frame_max=10**6).feed("stdout", b"[" * 100_000 + b"\n")
    assert frames[0]["type"] == "log"


def test_stderr_lines_are_logs_even_if_they_look_like_frames() -> None:
    frames = assembler().feed("stderr", b'{"type":"result","payload":1}\n')
    assert frames[0]["type"] == "log"
    assert frames[0]["stream"] == "stderr"


def test_frame_over_the_line_limit_becomes_a_protocol_error_with_the_same_seq() -> None:
    # A long run id makes the envelope push a line that fit into a frame that does not.
    asm = FrameAssembler(FrameFactory("r" * 600), frame_max=2048, stream_cap=10**9)
    frames = asm.feed("stdout", b'{"type":"data","payload":"' + b"x" * 1400 + b'"}\n')
    frames += asm.feed("stdout", b'{"type":"result","payload":1}\n')
    assert frames[0]["type"] == "error"
    assert frames[0]["error"]["kind"] == "ProtocolError"
    assert [f["seq"] for f in frames] == [0, 1]


def test_oversized_frame_line_is_reported_as_a_protocol_error() -> None:
    frames = assembler(frame_max=4096).feed(
        "stdout", b'{"type":"result","payload":"' + b"x" * 9000 + b'"}\n'
    )
    assert [f["type"] for f in frames] == ["error"]
    assert frames[0]["error"]["kind"] == "ProtocolError"


def test_every_emitted_line_fits_the_limit_even_with_escaping() -> None:
    asm = assembler(frame_max=4096)
    frames = asm.feed("stdout", b"\x01" * 5000 + b"\n")
    assert all(len(encode(f)) <= 4096 for f in frames)
    assert frames[0]["line"].endswith(TRUNCATION_MARK)


def test_stream_cap_counts_both_streams_and_stops_output() -> None:
    asm = assembler(cap=10)
    frames = asm.feed("stdout", b"12345\n") + asm.feed("stderr", b"67890\nabc\n")
    assert asm.over_cap
    assert [f["line"] for f in frames] == ["12345", "6789"[:4]] or len(frames) <= 2


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "exit", "status": "ok"},
        {"type": "accepted"},
        {"type": "started", "container_id": "x"},
        {"type": "result"},
        {"type": "result", "payload": 1, "extra": 2},
        {"type": "progress", "message": "m", "fraction": 2},
        {"type": "progress", "message": 1},
        {"type": "log", "stream": "stdin", "line": "x"},
        {"type": "error", "error": "boom"},
        [1, 2],
    ],
)
def test_script_cannot_send_coordinator_frames_or_malformed_ones(obj: object) -> None:
    assert script_fields(obj) is None


def test_script_envelope_is_replaced_by_ours() -> None:
    frames = assembler().feed(
        "stdout", b'{"v":9,"run_id":"evil","seq":99,"type":"result","payload":1}\n'
    )
    assert (frames[0]["v"], frames[0]["run_id"], frames[0]["seq"]) == (1, "r", 0)


def test_ts_never_goes_back_within_a_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # A read's data lines took the moment the read began, while a progress line between them
    # was stamped when it was made: the data line after it went back in time.
    clock = iter(range(1_700_000_000_000_000_000, 1_800_000_000_000_000_000, 1_000_000))
    monkeypatch.setattr("sandbox.frames.time.time_ns", lambda: next(clock))
    chunk = (
        b'{"type":"data","payload":1}\n'
        b'{"type":"progress","message":"half","fraction":0.5}\n'
        b'{"type":"data","payload":2}\n'
    )
    frames = assembler().feed("stdout", chunk)
    assert [f["type"] for f in frames] == ["data", "progress", "data"]
    stamps = [f["ts"] for f in frames]
    assert stamps == sorted(stamps), stamps
