"""Requests: text that is not Unicode is refused, naming where it is."""

from __future__ import annotations

import os

import pytest

from sandbox.errors import InvalidRequest
from sandbox.request import parse_request, request_from_data


def test_a_lone_surrogate_in_args_is_an_invalid_request_naming_the_key() -> None:
    # JSON can spell one ("\ud800"); the audit log could not encode it and the run ended with a
    # traceback instead of an exit frame.
    with pytest.raises(InvalidRequest, match=r"args\.rows\.1: text that is not valid") as caught:
        parse_request(b'{"tool": "echo", "args": {"rows": ["ok", "a\\ud800b"]}}')
    assert caught.value.details["key"] == "args.rows.1"


def test_a_lone_surrogate_in_a_key_is_named_too() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(b'{"tool": "echo", "args": {"ok": 1, "\\udc80": 1}}')
    assert caught.value.details["key"] == "args.\ufffd"
    assert "args.\ufffd: text that is not valid Unicode" in str(caught.value)


@pytest.mark.parametrize("key", ["inputs.a", "output_dir"])
def test_an_argv_path_that_is_not_utf8_is_an_invalid_request(key: str) -> None:
    # The one check for every path a request names: staging sees only requests that passed it.
    path = os.fsdecode(b"/data/x\xff")  # what argv gives for those bytes
    data: dict[str, object] = {"tool": "echo", "args": {}}
    data["inputs" if key == "inputs.a" else "output_dir"] = (
        {"a": path} if key == "inputs.a" else path
    )
    with pytest.raises(InvalidRequest, match="text that is not valid Unicode") as caught:
        request_from_data(data)
    assert caught.value.details["key"] == key


def test_unicode_text_and_escaped_pairs_pass() -> None:
    request = parse_request('{"tool": "echo", "args": {"s": "héllo \\ud83d\\ude00 ✓"}}'.encode())
    assert request.args == {"s": "héllo 😀 ✓"}


def test_a_key_given_twice_is_an_invalid_request_not_a_silent_choice() -> None:
    # The last value won before; a proxy that checked the request may have read the first.
    with pytest.raises(InvalidRequest, match="'tool' appears twice"):
        parse_request(b'{"tool": "echo", "tool": "other"}')
    with pytest.raises(InvalidRequest, match="'a' appears twice"):
        parse_request(b'{"tool": "echo", "inputs": {"a": "/x", "a": "/y"}}')


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        (b'{"tool": "echo", "args": [1]}', "args", "args: must be a JSON object"),
        # Named alone, not "timeout_s.float" (the member of the union that failed).
        (b'{"tool": "echo", "timeout_s": "5"}', "timeout_s", "timeout_s: must be a number"),
        (b'{"tool": 5}', "tool", "tool: must be a string"),
        (b'{"tool": "echo", "inputs": {"a": 3}}', "inputs.a", "inputs.a: must be a string"),
        (b'{"tool": "echo", "bogus": 1}', "bogus", "bogus: unknown key"),
    ],
)
def test_type_errors_are_said_in_json_terms(text: bytes, key: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(text)
    assert caught.value.details["key"] == key
    assert f"invalid request: {message}" in str(caught.value)


@pytest.mark.parametrize("text", [b"", b"  \n"])
def test_an_empty_request_says_so(text: bytes) -> None:
    with pytest.raises(InvalidRequest, match="the request is empty"):
        parse_request(text)
