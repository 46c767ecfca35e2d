"""The run request (contract section 1): the pydantic model and its strict JSON parsing."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InvalidRequest

MAX_REQUEST_BYTES = 16 * 1024 * 1024
INPUT_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_SURROGATE = re.compile("[\ud800-\udfff]")


class Request(BaseModel):
    """One run, as a caller asks for it."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    tool: str = Field(min_length=1, max_length=128)
    """The whitelisted tool to run."""
    args: dict[str, Any] = Field(default_factory=dict)
    """Arguments for the script, checked against the policy's ``args_schema``."""
    inputs: dict[str, str] = Field(default_factory=dict)
    """Input name -> host path, mounted read-only at ``/inputs/NAME``."""
    output_dir: str | None = None
    """Host directory for outputs; must not exist yet or be empty."""
    timeout_s: float | int | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Lowers the policy's deadline; never raises it."""


def _reject_constant(name: str) -> Any:
    msg = f"{name} is not valid JSON"
    raise ValueError(msg)


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        msg = f"the number {text[:40]} is out of range"
        raise ValueError(msg)
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        keys = [key for key, _ in pairs]
        twice = next(key for index, key in enumerate(keys) if key in keys[:index])
        msg = f"the key {twice!r} appears twice in one object"
        raise ValueError(msg)
    return obj


def loads_strict(text: str | bytes) -> Any:
    """``json.loads`` without NaN/Infinity, which strict JSON does not have, and without
    numbers that only overflow to them (``1e999``): nothing downstream could write them."""
    return json.loads(text, parse_constant=_reject_constant, parse_float=_finite)


def loads_request(text: str | bytes) -> Any:
    """``loads_strict`` for what callers send (requests, args, JSON-RPC messages), where a key
    given twice is also an error, not a silent choice of the last value, which another JSON
    reader (a proxy that checked the request first) may not have made."""
    return json.loads(
        text, parse_constant=_reject_constant, parse_float=_finite, object_pairs_hook=_unique_keys
    )


def parse_request(text: str | bytes) -> Request:
    """Parse one request JSON object; every problem is an InvalidRequest naming the key."""
    if len(text) > MAX_REQUEST_BYTES:
        msg = f"request is larger than {MAX_REQUEST_BYTES} bytes"
        raise InvalidRequest(msg)
    if not text.strip():
        msg = "the request is empty"
        raise InvalidRequest(msg, fix='send one JSON object: {"tool": …, "args": {…}}')
    try:
        data = loads_request(text)
    except (ValueError, RecursionError) as exc:
        msg = f"request is not valid JSON: {exc}"
        raise InvalidRequest(msg) from exc
    return request_from_data(data)


def request_from_data(data: Any) -> Request:
    """Validate an already decoded request object."""
    if not isinstance(data, dict):
        msg = "request must be a JSON object"
        raise InvalidRequest(msg)
    _refuse_non_unicode(data)
    try:
        return Request.model_validate(data)
    except ValidationError as exc:
        key, message = describe_error(exc.errors()[0], _EXPECTED)
        msg = f"invalid request: {key}: {message}"
        raise InvalidRequest(msg, key=key) from exc


# What each request key holds, said in JSON's terms (pydantic's say "a valid dictionary").
_EXPECTED = {
    "tool": "a string",
    "args": "a JSON object",
    "inputs": "a JSON object of input names to host paths",
    "output_dir": "a string (a host path) or null",
    "timeout_s": "a number of seconds, or null",
}
# The member of a union that failed, which pydantic appends to the key (``timeout_s.float``).
_UNION_MEMBERS = frozenset({"str", "int", "float", "bool", "none", "dict[str,any]", "list[any]"})
_EXPECTED_BY_TYPE = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "dict_type": "a JSON object",
    "model_type": "a JSON object",
    "list_type": "an array",
    "none_required": "null",
}


def describe_error(error: Any, expected: dict[str, str]) -> tuple[str, str]:
    """A validation error as (key, message) in JSON's terms. A key that takes one of several
    types is named alone: pydantic appends the member that failed (``timeout_s.float``)."""
    loc = [str(part) for part in error["loc"]]
    where = ".".join(loc) or "(message)"
    kind = error["type"]
    if kind == "extra_forbidden":
        return where, "unknown key"
    if kind not in _EXPECTED_BY_TYPE:
        return where, error["msg"]
    whole_key = len(loc) == 1 or (len(loc) == 2 and loc[1] in _UNION_MEMBERS)
    if whole_key and loc[0] in expected:
        return loc[0], f"must be {expected[loc[0]]}"
    return where, f"must be {_EXPECTED_BY_TYPE[kind]}"


def _refuse_non_unicode(data: dict[str, Any]) -> None:
    """Text that is not Unicode (a lone surrogate: ``"\\ud800"`` in JSON, or a path from argv
    whose bytes are not UTF-8) is an invalid request: frames, mounts and the audit log are
    UTF-8, and could only carry it altered. One pass of the C encoder finds it; only then is
    the key looked for, to name it."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        # A key may be the culprit: it is named as it can be shown.
        key = shown(_first_non_unicode(data) or "(request)")
        msg = (
            f"invalid request: {key}: text that is not valid Unicode (a lone surrogate, or "
            "bytes that are not UTF-8)"
        )
        raise InvalidRequest(msg, key=key, fix="send UTF-8 text only") from None
    except (TypeError, ValueError):
        return  # not JSON-shaped: validation names what is wrong


def _first_non_unicode(value: Any, path: str = "") -> str | None:
    if isinstance(value, str):
        return None if is_utf8(value) else path
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, item in items:
        where = f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and not is_utf8(key):
            return where
        found = _first_non_unicode(item, where)
        if found is not None:
            return found
    return None


def shown(text: str) -> str:
    """``text`` with U+FFFD for each lone surrogate, as it can be written in UTF-8."""
    return _SURROGATE.sub("\ufffd", text)


def is_utf8(text: str) -> bool:
    """False for text with lone surrogates (``os`` decodes bytes that are not UTF-8 to them)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
