"""The streaming fast path: a runtime-shaped data/result line is passed through without
re-encoding, byte for byte what the exact path would have produced, and anything it cannot
vouch for takes the exact path."""

from __future__ import annotations

import copy
import json
import pickle
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from sandbox.frames import EncodedFrame, FrameFactory, encode
from sandbox.stream import FrameAssembler


def feed(line: bytes, frame_max: int = 1024 * 1024) -> dict[str, object]:
    assembler = FrameAssembler(FrameFactory("r"), frame_max=frame_max, stream_cap=1 << 30)
    (frame,) = assembler.feed("stdout", line + b"\n")
    return frame


def exact(frame: dict[str, object]) -> bytes:
    """The frame's values encoded as the exact path does, lone surrogates becoming U+FFFD."""
    text = json.dumps(dict(frame), ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace").encode() + b"\n"


@pytest.mark.parametrize(
    "line",
    [
        b'{"type":"data","payload":{"i":1,"pad":"' + b"y" * 60000 + b'"}}',
        b'{"type":"result","payload":[1,2.5,"h\xc3\xa9llo \\u00e9",null,true]}',
        b'{"type":"data","payload":{"$type":"decimal","value":"12.50"}}',
    ],
)
def test_a_runtime_line_is_spliced_into_exactly_the_bytes_encoding_gives(line: bytes) -> None:
    frame = feed(line)
    assert isinstance(frame, EncodedFrame)
    assert frame.line is not None
    assert json.loads(frame.line) == dict(frame)
    assert frame["payload"] == json.loads(line)["payload"]
    if b"\\u00e9" not in line:
        assert encode(frame) == exact(frame)


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (b'{"type":"data","payload":1,"type":"exit"}', "log"),  # a second key behind the value
        (b'{"type":"data","payload":1,"payload":2}', "data"),  # decoded exactly: last one wins
        (b'{"type":"data","payload":1,"extra":2}', "log"),  # a key the protocol does not have
        (b'{"type":"data","payload":{"a":1},"a":1}', "log"),
        (b'{"type":"data","payload":"\\ud800 lone"}', "data"),  # lone surrogate: replaced
        (b'{"type":"data","payload":NaN}', "log"),
        # Overflows to infinity, which no frame can carry: a log line like NaN (it was an
        # error claiming the frame exceeded the line limit).
        (b'{"type":"data","payload":1e999}', "log"),
        (b'{"type":"data","payload":"\xed\xa0\x80"}', "data"),  # encoded surrogate: replaced
        (b'{"type":"data","payload":"a"}   trailing', "log"),
        (b'{"type":"data","payload":\xef\xbb\xbf{}}', "log"),  # a BOM inside the line
        (b'{"type":"data","payload":"\\udc00 low"}', "data"),  # lone low surrogate: replaced
        (b'{"type":"data","payload":"\\ud800\\u0041"}', "data"),  # high without its low
        (b'{"type":"data","payload":' + b"[" * 1100 + b"]" * 1100 + b"}", "log"),  # too deep
        (b'{"type":"data","payload":"a\tb"}', "log"),  # an unescaped control character
        (b'{"type":"data","payload":01}', "log"),
        (b'{"type":"data","payload":}', "log"),
    ],
)
def test_lines_the_fast_path_cannot_vouch_for_take_the_exact_path(line: bytes, kind: str) -> None:
    frame = feed(line)
    assert frame["type"] == kind
    # Not the script's bytes passed on: the frame's line is what encoding its values gives.
    assert encode(frame) == exact(frame)
    json.loads(encode(frame))  # always one valid line


def test_a_spliced_frame_over_the_limit_becomes_a_protocol_error_with_the_same_seq() -> None:
    frame = feed(b'{"type":"data","payload":"' + b"x" * 9000 + b'"}', frame_max=8192)
    assert frame["type"] == "error"
    assert frame["error"]["kind"] == "ProtocolError"  # type: ignore[index]
    assert frame["seq"] == 0
    assert len(encode(frame)) < 8192
    assert "payload" not in frame


def test_changing_a_spliced_frame_forgets_its_line() -> None:
    frame = feed(b'{"type":"data","payload":1}')
    assert isinstance(frame, EncodedFrame)
    frame["payload"] = 2
    assert json.loads(encode(frame))["payload"] == 2


@pytest.mark.parametrize(
    "payload",
    [
        b"123456789012345678901234567890",  # beyond 64 bits: json keeps the int exact
        b"-9223372036854775809",  # one below int64
        b"18446744073709551615",  # uint64 max
        b"[1e19, -3.5e300, 0.1]",  # large floats stay floats
        b"[" * 300 + b"]" * 300,  # deeper than the fast parser is trusted with
        b'{"a":{"b":[1,{"c":-0}]}}',
    ],
)
def test_the_fast_parse_gives_the_value_json_gives(payload: bytes) -> None:
    line = b'{"type":"data","payload":' + payload + b"}"
    frame = feed(line)
    expected = json.loads(payload)
    assert frame["payload"] == expected
    assert type(frame["payload"]) is type(expected)
    if isinstance(expected, int):
        assert str(frame["payload"]) == str(expected)
    assert json.loads(encode(frame))["payload"] == expected


# --- the spliced frame's payload is decoded only when read ---------------------------------

LAZY_LINE = b'{"type":"data","payload":{"i":7,"rows":[{"a":"h\xc3\xa9"},null,1.5]}}'
LAZY_PAYLOAD = {"i": 7, "rows": [{"a": "hé"}, None, 1.5]}


@pytest.fixture
def lazy() -> EncodedFrame:
    frame = feed(LAZY_LINE)
    assert isinstance(frame, EncodedFrame)
    assert "payload" not in dict.keys(frame)  # not decoded yet: only the line holds it
    return frame


def expected_frame(frame: EncodedFrame) -> dict[str, object]:
    head = {key: dict.__getitem__(frame, key) for key in ("v", "run_id", "seq", "ts", "type")}
    return {**head, "payload": LAZY_PAYLOAD}


def test_the_payload_is_not_decoded_to_stream_a_frame(lazy: EncodedFrame) -> None:
    assert lazy["type"] == "data"
    assert json.loads(encode(lazy)) == expected_frame(lazy)
    assert "payload" not in dict.keys(lazy)


def test_reading_the_envelope_does_not_decode_the_payload(lazy: EncodedFrame) -> None:
    assert lazy.get("type") == "data"
    assert "seq" in lazy
    assert lazy["ts"]
    assert lazy.get("missing") is None
    assert "payload" not in dict.keys(lazy)  # what serve's metrics read on every frame


@pytest.mark.parametrize(
    "read",
    [
        lambda f: f["payload"],
        lambda f: f.get("payload"),
        lambda f: dict(f),
        lambda f: {**f},
        lambda f: json.loads(json.dumps(f)),
        lambda f: copy.copy(f),
        lambda f: copy.deepcopy(f),
        lambda f: pickle.loads(pickle.dumps(f)),  # noqa: S301 - our own bytes
        lambda f: {} | f,
        lambda f: f | {},
        lambda f: dict(zip(f.keys(), f.values(), strict=True)),
        lambda f: dict(f.items()),
        lambda f: {key: f[key] for key in f},
        lambda f: f.copy(),
    ],
    ids=[
        "getitem",
        "get",
        "dict",
        "unpack",
        "json.dumps",
        "copy",
        "deepcopy",
        "pickle",
        "ror",
        "or",
        "keys-values",
        "items",
        "iter",
        "copy-method",
    ],  # fmt: skip
)
def test_every_way_of_reading_a_spliced_frame_sees_its_payload(
    lazy: EncodedFrame, read: Callable[[EncodedFrame], Any]
) -> None:
    value = read(lazy)
    whole = expected_frame(lazy)
    assert value in (LAZY_PAYLOAD, whole)  # the payload itself, or the whole frame
    assert lazy == whole
    assert not lazy != whole  # noqa: SIM202 - __ne__ is its own method on a dict
    assert len(lazy) == 6
    assert "payload" in lazy
    assert "payload" in repr(lazy)
    assert list(reversed(lazy))[0] == "payload"


def test_a_change_keeps_the_payload_and_forgets_the_line(lazy: EncodedFrame) -> None:
    lazy["extra"] = 1
    assert lazy.line is None
    assert json.loads(encode(lazy))["payload"] == LAZY_PAYLOAD


@pytest.mark.parametrize(
    "change",
    [
        lambda f: f.update(seq=9),
        lambda f: f.setdefault("extra", 1),
        lambda f: f.pop("seq"),
        lambda f: f.popitem(),
        lambda f: f.__ior__({"seq": 9}),
        lambda f: f.__delitem__("ts"),
    ],
    ids=["update", "setdefault", "pop", "popitem", "ior", "del"],
)
def test_every_change_decodes_first(
    lazy: EncodedFrame, change: Callable[[EncodedFrame], Any]
) -> None:
    change(lazy)
    assert lazy.line is None
    assert dict.get(lazy, "payload", LAZY_PAYLOAD) == LAZY_PAYLOAD


def test_dropping_the_payload_does_not_decode_it(lazy: EncodedFrame) -> None:
    del lazy["payload"]
    assert "payload" not in lazy
    assert lazy.line is None
    assert "payload" not in json.loads(encode(lazy))
    with pytest.raises(KeyError):
        lazy["payload"]


def test_a_log_frame_carries_its_encoding() -> None:
    frame = feed(b"plain text, \xc3\xa9 and a \x1b escape")
    assert frame["type"] == "log"
    assert isinstance(frame, EncodedFrame)
    assert frame.line == exact(frame)


def test_the_timestamp_is_the_protocol_s_utc_milliseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox import frames

    for ns in (1_764_400_000_123_456_789, 1_764_400_000_999_999_999, 1_764_400_001_000_000_000):
        monkeypatch.setattr(frames.time, "time_ns", lambda ns=ns: ns)
        text, data = frames.stamp()
        expected = datetime.fromtimestamp(ns // 1_000_000 / 1000, UTC)
        assert text == expected.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert data == text.encode()
        assert frames.stamp()[0] is text  # the same millisecond: formatted once
