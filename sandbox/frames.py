"""Protocol v1 frames on the hot path: the factory that stamps the envelope (``v``, ``run_id``,
``seq``, ``ts``), ``encode`` (one line), and the rule for which frames a script may send.

Frames travel as plain dicts, one per line of tool output; their pydantic models (the reference
for decoding and the JSON Schema) live in ``frame_models`` and load only when asked for, so a
one-shot ``sandbox run`` does not pay for building them.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from .errors import SandboxError

PROTOCOL_VERSION = 1
Frame = dict[str, Any]
SCRIPT_FRAME_TYPES = frozenset({"progress", "data", "result", "error", "log"})
_ENVELOPE = frozenset({"v", "run_id", "seq", "ts", "type"})
_SCRIPT_ERROR_KINDS = frozenset({"ToolError", "ProtocolError"})


def __getattr__(name: str) -> Any:
    """The frame models and ``decode``, imported from ``frame_models`` on first use."""
    if name.startswith("__"):
        # `from .frames import X` probes `__path__`: answering it must not load the models.
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    from . import frame_models

    try:
        return getattr(frame_models, name)
    except AttributeError:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg) from None


# (millisecond, text, text as bytes) of the last stamp: frames that stream faster than one per
# millisecond share it instead of formatting a datetime each.
_last_stamp: tuple[int, str, bytes] = (-1, "", b"")


def stamp() -> tuple[str, bytes]:
    """The ``ts`` of a frame made now, as text and as UTF-8."""
    global _last_stamp  # noqa: PLW0603 - a cache; a race only formats the same text twice
    ms = time.time_ns() // 1_000_000
    last = _last_stamp
    if last[0] != ms:
        moment = datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=ms % 1000 * 1000)
        text = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        last = _last_stamp = (ms, text, text.encode())
    return last[1], last[2]


class EncodedFrame(dict[str, Any]):
    """A frame that already knows its encoded line, so that it is encoded once. Any change to
    the frame forgets the line, so ``encode`` can never return a stale one."""

    line: bytes | None = None

    def _change(self) -> None:
        self.line = None

    def __setitem__(self, key: str, value: Any) -> None:
        self._change()
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._change()
        super().__delitem__(key)

    def __ior__(self, other: Any) -> EncodedFrame:  # type: ignore[override,misc]
        self._change()
        super().update(other)
        return self


class SplicedFrame(EncodedFrame):
    """A ``data``/``result`` frame whose line the streaming fast path built around the
    script's own bytes: ``…,"type":TYPE,"payload":PAYLOAD}``, the payload text validated but
    not decoded.

    The payload is decoded from the line the first time anything but the line asks for it
    (``frame["payload"]``, ``get``, iteration, ``items()``, ``==``, ``dict(frame)``,
    ``json.dumps``...): a run whose frames only travel as bytes never builds its payloads'
    Python values, which costs more than the validation itself. Any change decodes the payload
    first, so the dict never loses it."""

    def _decode_payload(self) -> None:
        line = self.line
        if line is not None and not dict.__contains__(self, "payload"):
            # The envelope before it (version, our run id, seq, ts) cannot hold this key.
            start = line.index(b'"payload":') + len(b'"payload":')
            text = line[start:-2]  # up to the closing brace and the newline
            dict.__setitem__(self, "payload", json.loads(text, parse_constant=_no_constant))

    def _change(self) -> None:
        self._decode_payload()
        self.line = None

    def __missing__(self, key: str) -> Any:
        if key == "payload" and self.line is not None:
            self._decode_payload()
            return dict.__getitem__(self, key)
        raise KeyError(key)

    def __delitem__(self, key: str) -> None:
        if key == "payload" and self.line is not None and not dict.__contains__(self, key):
            self.line = None  # dropped unread: no need to decode it
            return
        super().__delitem__(key)

    # The envelope's keys are read on every frame (its type, say): only the payload decodes.
    def get(self, key: str, default: Any = None) -> Any:
        if key == "payload":
            self._decode_payload()
        return dict.get(self, key, default)

    def __contains__(self, key: object) -> bool:
        if key == "payload":
            self._decode_payload()
        return dict.__contains__(self, key)

    def __eq__(self, other: object) -> bool:
        self._decode_payload()
        return super().__eq__(other)

    def __ne__(self, other: object) -> bool:
        self._decode_payload()
        return super().__ne__(other)


def _reading(name: str) -> Any:
    method = getattr(dict, name)

    def read(self: SplicedFrame, *args: Any) -> Any:
        self._decode_payload()
        return method(self, *args)

    read.__name__ = name
    return read


def _changing(name: str) -> Any:
    method = getattr(dict, name)

    def change(self: EncodedFrame, *args: Any, **kwargs: Any) -> Any:
        self._change()
        return method(self, *args, **kwargs)

    change.__name__ = name
    return change


for _name in ("clear", "pop", "popitem", "setdefault", "update"):
    setattr(EncodedFrame, _name, _changing(_name))
# Every other way of reading a dict, so that C code which iterates the frame (dict(),
# json.dumps, copy, pickle, ``|``) sees the payload too.
for _name in (
    "__iter__", "__len__", "__repr__", "__reversed__", "__or__", "__ror__", "__reduce_ex__",
    "copy", "items", "keys", "values",
):  # fmt: skip
    setattr(SplicedFrame, _name, _reading(_name))


def _no_constant(name: str) -> Any:
    msg = f"{name} is not valid JSON"
    raise ValueError(msg)


# json.dumps builds an encoder per call when given options; frames are encoded per line.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def encode(frame: Frame) -> bytes:
    """One frame as a UTF-8 line with its newline; lone surrogates become U+FFFD."""
    if isinstance(frame, EncodedFrame) and frame.line is not None:
        return frame.line
    text = _ENCODER.encode(frame)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        data = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace").encode("utf-8")
    return data + b"\n"


def sealed(frame: Frame, line: bytes) -> EncodedFrame:
    """``frame`` carrying ``line``, its encoding, so that it is not encoded a second time."""
    done = EncodedFrame(frame)
    done.line = line
    return done


class FrameFactory:
    """Makes one run's frames: stamps the envelope with consecutive ``seq`` numbers."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._seq = 0
        # The envelope's fixed start, encoded once for the fast path's lines.
        self._line_start = b'{"v":%d,"run_id":%s' % (
            PROTOCOL_VERSION,
            json.dumps(run_id, ensure_ascii=False).encode(),
        )

    def make(self, type_: str, **fields: Any) -> Frame:
        frame: Frame = {"v": PROTOCOL_VERSION, "run_id": self.run_id, "seq": self._seq}
        frame["ts"] = stamp()[0]
        frame["type"] = type_
        frame.update(fields)
        self._seq += 1
        return frame

    def spliced(self, type_: str, script_line: bytes, now: tuple[str, bytes]) -> SplicedFrame:
        """A ``data``/``result`` frame whose line reuses the script's own line,
        ``{"type":TYPE,"payload":PAYLOAD}``, which the caller has checked to be exactly that
        object with a strict JSON payload, safe to pass on; the envelope is ours, as in
        ``make``, with the same key order, ``now`` (``stamp()``) its ts. The payload is decoded
        only if someone reads it (``SplicedFrame``)."""
        seq = self._seq
        self._seq = seq + 1
        frame = SplicedFrame(v=PROTOCOL_VERSION, run_id=self.run_id, seq=seq, ts=now[0], type=type_)
        # One join builds the whole line: the script's bytes are copied once, straight into
        # place. (A `%b` format of the same pieces costs 5x as much on large lines: the bytes
        # formatter grows its buffer as it goes and copies it again at the end.)
        frame.line = b"".join(
            (
                self._line_start,
                b',"seq":%d,"ts":"%b",' % (seq, now[1]),
                memoryview(script_line)[1:],
                b"\n",
            )
        )
        return frame

    def log(self, stream: str, line: str) -> Frame:
        return self.make("log", stream=stream, line=line)

    def error(
        self,
        kind: str,
        message: str,
        *,
        traceback: list[dict[str, Any]] | None = None,
        details: dict[str, Any] | None = None,
    ) -> Frame:
        error = {
            "kind": kind,
            "message": message,
            "traceback": traceback or [],
            "details": details or {},
        }
        return self.make("error", error=error)

    def from_exception(self, exc: SandboxError) -> Frame:
        return self.error(exc.kind, exc.message, details=_jsonable_details(exc.details))


def _jsonable_details(details: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (str, int, float, bool)) else str(v) for k, v in details.items()}


# --- frames written by a script ---------------------------------------------------------------


def _clean_traceback(value: Any) -> list[dict[str, Any]] | None:
    if not isinstance(value, list):
        return None
    entries = []
    for item in value[:200]:
        if not isinstance(item, dict):
            return None
        line = item.get("line")
        entries.append(
            {
                "file": str(item.get("file", "")),
                "line": line if isinstance(line, int) and not isinstance(line, bool) else None,
                "function": str(item.get("function", "")),
                "code": str(item.get("code", "")),
            }
        )
    return entries


def _script_error(error: Any) -> dict[str, Any] | None:
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return None
    traceback = _clean_traceback(error.get("traceback", []))
    details = error.get("details", {})
    if traceback is None or not isinstance(details, dict):
        return None
    # A script may only report its own failure; it cannot claim a timeout or a denial.
    kind = error.get("kind")
    return {
        "kind": kind if kind in _SCRIPT_ERROR_KINDS else "ToolError",
        "message": error["message"],
        "traceback": traceback,
        "details": details,
    }


def script_fields(obj: Any) -> tuple[str, dict[str, Any]] | None:
    """The type and fields of a frame a script wrote, or None when it is not one we accept.

    The envelope (v, run_id, seq, ts) is the coordinator's: whatever the script put there is
    dropped. ``accepted``, ``started`` and ``exit`` are never accepted from a script.
    """
    if not isinstance(obj, dict):
        return None
    type_ = obj.get("type")
    if type_ not in SCRIPT_FRAME_TYPES:
        return None
    fields = {k: v for k, v in obj.items() if k not in _ENVELOPE}
    result = _SCRIPT_FIELD_CHECKS[type_](fields)
    return None if result is None else (type_, result)


def _progress(fields: dict[str, Any]) -> dict[str, Any] | None:
    message, fraction = fields.get("message"), fields.get("fraction")
    if not isinstance(message, str) or set(fields) - {"message", "fraction"}:
        return None
    if fraction is None:
        return {"message": message}
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        return None
    if not 0 <= fraction <= 1:
        return None
    return {"message": message, "fraction": fraction}


def _payload(fields: dict[str, Any]) -> dict[str, Any] | None:
    return fields if set(fields) == {"payload"} else None


def _log(fields: dict[str, Any]) -> dict[str, Any] | None:
    if set(fields) != {"stream", "line"} or fields["stream"] not in ("stdout", "stderr"):
        return None
    return fields if isinstance(fields["line"], str) else None


def _error(fields: dict[str, Any]) -> dict[str, Any] | None:
    if set(fields) != {"error"}:
        return None
    error = _script_error(fields["error"])
    return None if error is None else {"error": error}


_SCRIPT_FIELD_CHECKS = {
    "progress": _progress,
    "data": _payload,
    "result": _payload,
    "log": _log,
    "error": _error,
}
