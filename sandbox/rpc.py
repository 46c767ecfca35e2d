"""JSON-RPC 2.0 messages of ``sandbox serve``: the error codes, the pydantic models of requests
and params (``extra="forbid"``), and the error raised for a call that never became a run.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from .request import describe_error, is_utf8

# JSON-RPC 2.0 error codes; -32000.. are this server's own (docs/serve.md).
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SHUTTING_DOWN = -32000
QUEUE_FULL = -32001
UNKNOWN_RUN = -32002
SANDBOX_ERROR = -32003

RpcId = int | str | None
M = TypeVar("M", bound=BaseModel)


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class RpcRequest(_Message):
    """A JSON-RPC 2.0 request (or, without ``id``, a notification) from the client."""

    jsonrpc: Literal["2.0"]
    """Always "2.0"."""
    method: str
    """run, cancel, tools, health, metrics or shutdown."""
    id: int | str | None = None
    """Echoed in the response; absent for a notification, which gets no answer."""
    params: dict[str, Any] | list[Any] | None = None
    """Named params (an object); ``run`` takes the contract's request object."""

    @field_validator("id")
    @classmethod
    def _echoable(cls, value: RpcId) -> RpcId:
        # Written back, a lone surrogate would come out as U+FFFD: an answer the client could
        # match to none of its calls.
        if isinstance(value, str) and not is_utf8(value):
            kind, text = "id_not_unicode", "must be Unicode text (it holds a lone surrogate)"
            raise PydanticCustomError(kind, text)
        return value

    @property
    def is_notification(self) -> bool:
        return "id" not in self.model_fields_set


class CancelParams(_Message):
    run_id: str = Field(min_length=1, max_length=128)
    """The run to stop, as announced by ``run.assigned`` (or any of its frames)."""


class ShutdownParams(_Message):
    drain: bool = False
    """Let running and queued runs finish instead of cancelling them."""


class NoParams(_Message):
    """tools, health and metrics take no params."""


class RunAssigned(_Message):
    """Params of the ``run.assigned`` notification, sent before any event of the run."""

    id: int | str | None
    """The id of the client's ``run`` request."""
    run_id: str
    """The id every frame of this run carries."""
    queued: bool
    """Whether the run waits for a free slot."""


class RpcErrorObject(_Message):
    """The ``error`` member of a failed response."""

    code: int
    message: str
    data: dict[str, Any] | None = None


class RpcError(Exception):
    """A request the server answers with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.body = RpcErrorObject(code=code, message=message, data=data)


_EXPECTED = {
    "jsonrpc": 'the string "2.0"',
    "method": "a string",
    "id": "a string, an integer or null",
    "params": "a JSON object (named params)",
}


def _first_error(exc: ValidationError) -> str:
    where, problem = describe_error(exc.errors()[0], _EXPECTED)
    return f"{where}: {problem}"


def _params(model: type[M], message: RpcRequest) -> M:
    raw: Any = {} if message.params in (None, []) else message.params
    if not isinstance(raw, dict):
        text = f"{message.method} takes named params (a JSON object)"
        raise RpcError(INVALID_PARAMS, text)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        text = f"invalid params for {message.method}: {_first_error(exc)}"
        raise RpcError(INVALID_PARAMS, text) from exc


def _echo_id(data: Any) -> RpcId:
    """The id of an invalid request, when it has a usable one."""
    candidate = data.get("id") if isinstance(data, dict) else None
    if isinstance(candidate, bool) or not isinstance(candidate, int | str):
        return None
    if isinstance(candidate, str) and not is_utf8(candidate):
        return None  # it could only be echoed altered
    return candidate
