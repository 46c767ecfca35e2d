"""Protocol v1 frames: the pydantic models (a discriminated union on ``type``), the factory
that stamps the envelope (``v``, ``run_id``, ``seq``, ``ts``) and encodes a frame as one line,
and the acceptance rule for frames a script writes.

Frames travel as plain dicts on the hot path (one per line of tool output); the models are the
reference for decoding, tests and the published JSON Schema.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from .errors import ErrorKind, SandboxError, Status

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 1024 * 1024
Frame = dict[str, Any]
SCRIPT_FRAME_TYPES = frozenset({"progress", "data", "result", "error", "log"})
_ENVELOPE = frozenset({"v", "run_id", "seq", "ts", "type"})
_SCRIPT_ERROR_KINDS = frozenset({"ToolError", "ProtocolError"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TracebackEntry(_Model):
    file: str
    line: int | None
    function: str
    code: str


class ErrorInfo(_Model):
    kind: ErrorKind
    message: str
    traceback: list[TracebackEntry] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)


class OutputEntry(_Model):
    path: str
    """Relative to output_dir, '/'-separated."""
    bytes: int
    sha256: str


class RefusedEntry(_Model):
    path: str
    reason: str


class _Envelope(_Model):
    v: Literal[1]
    run_id: str
    seq: int = Field(ge=0)
    ts: str


class AcceptedFrame(_Envelope):
    type: Literal["accepted"]
    tool: str
    image: str
    image_id: str
    policy_sha256: str
    limits: dict[str, Any]


class StartedFrame(_Envelope):
    type: Literal["started"]
    container_id: str


class LogFrame(_Envelope):
    type: Literal["log"]
    stream: Literal["stdout", "stderr"]
    line: str


class ProgressFrame(_Envelope):
    type: Literal["progress"]
    message: str
    fraction: float | None = Field(default=None, ge=0, le=1)


class DataFrame(_Envelope):
    type: Literal["data"]
    payload: Any


class ResultFrame(_Envelope):
    type: Literal["result"]
    payload: Any


class ErrorFrame(_Envelope):
    type: Literal["error"]
    error: ErrorInfo


class ExitFrame(_Envelope):
    type: Literal["exit"]
    status: Status
    exit_code: int | None
    oom_killed: bool
    duration_s: float
    outputs: list[OutputEntry]
    refused: list[RefusedEntry]


AnyFrame = Annotated[
    AcceptedFrame
    | StartedFrame
    | LogFrame
    | ProgressFrame
    | DataFrame
    | ResultFrame
    | ErrorFrame
    | ExitFrame,
    Field(discriminator="type"),
]
FRAME_ADAPTER: TypeAdapter[AnyFrame] = TypeAdapter(AnyFrame)


def decode(line: str | bytes) -> AnyFrame:
    """Parse and validate one frame line (for consumers and tests)."""
    return FRAME_ADAPTER.validate_json(line)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode(frame: Frame) -> bytes:
    """One frame as a UTF-8 line with its newline; lone surrogates become U+FFFD."""
    text = json.dumps(frame, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        data = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace").encode("utf-8")
    return data + b"\n"


class FrameFactory:
    """Makes one run's frames: stamps the envelope with consecutive ``seq`` numbers."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._seq = 0

    def make(self, type_: str, **fields: Any) -> Frame:
        frame: Frame = {"v": PROTOCOL_VERSION, "run_id": self.run_id, "seq": self._seq}
        frame["ts"] = utc_now()
        frame["type"] = type_
        frame.update(fields)
        self._seq += 1
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
