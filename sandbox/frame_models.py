"""Protocol v1 frame models: a pydantic discriminated union on ``type``, for consumers that
decode frames (tests, the JSON Schema). The coordinator's hot path builds plain dicts in
``frames.py`` instead and never imports this module.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from .errors import ErrorKind, Status


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
