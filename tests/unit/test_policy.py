"""Policy files: strict parsing with file/line/key in every error, and authorization."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sandbox.errors import InvalidRequest, PolicyDenied, PolicyFileError
from sandbox.policy import authorize, find_policy, parse_policy, read_policy
from sandbox.request import Request, parse_request

from .conftest import policy_data


def parse(text: str, name: str = "echo.yaml") -> Any:
    return parse_policy(text.encode(), Path("/p") / name)


def dump(**overrides: Any) -> str:
    return yaml.safe_dump(policy_data(**overrides), sort_keys=False)


def test_valid_policy_parses_with_strict_defaults() -> None:
    loaded = parse(dump())
    policy = loaded.policy
    assert policy.network == "none"
    assert policy.runtime == "runc"
    assert policy.user == "65532:65532"
    assert len(loaded.sha256) == 64


def test_misspelled_key_names_file_line_and_key() -> None:
    text = dump().replace("memory_mb", "memry_mb")
    with pytest.raises(PolicyFileError) as err:
        parse(text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "memry_mb" in row)
    assert err.value.line == line
    assert err.value.key == "limits.memry_mb"
    assert str(err.value).startswith(f"/p/echo.yaml:{line}: limits.memry_mb: unknown key")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("!!python/object/apply:os.system ['id']", "constructor"),
        ("a: &x [1]\nb: *x\n", "aliases"),
        ("version: 1\nversion: 1\n", "duplicate key"),
        ("- a\n- b\n", "mapping"),
        ("key: [unclosed\n", "line 2|expected"),
    ],
)
def test_hostile_or_broken_yaml_is_refused(text: str, needle: str) -> None:
    with pytest.raises(PolicyFileError, match=needle):
        parse(text)


def test_huge_file_is_refused_before_parsing() -> None:
    with pytest.raises(PolicyFileError, match="larger than"):
        parse("a: " + "x" * 300_000)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"user": "0:0"}, "user"),
        ({"user": "root"}, "user"),
        ({"network": "host"}, "network"),
        ({"privileged": True}, "privileged"),
        ({"cap_add": ["SYS_ADMIN"]}, "cap_add"),
        ({"devices": ["/dev/kmsg"]}, "devices"),
        ({"seccomp": "unconfined"}, "seccomp"),
        ({"volumes": ["/var/run/docker.sock:/var/run/docker.sock"]}, "volumes"),
        ({"runtime": "kata"}, "runtime"),
        ({"image": {"name": "sandbox/x", "id": "latest"}}, "image.id"),
        ({"command": "python3 main.py"}, "command"),
        ({"limits": {"memory_mb": 64, "tmpfs_mb": 64}}, "limits"),
        ({"args_schema": {"type": "array"}}, "args_schema"),
        ({"version": 2}, "version"),
    ],
)
def test_dangerous_or_invalid_fields_are_refused(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(PolicyFileError) as err:
        parse(dump(**overrides))
    assert err.value.key == key


def test_tool_must_match_the_file_name() -> None:
    with pytest.raises(PolicyFileError, match="does not match the file name"):
        parse(dump(), name="other.yaml")


def test_unknown_tool_is_denied_and_path_tricks_are_not_tool_names(policy_dir: Path) -> None:
    for tool in ("nope", "../echo", "echo/../echo", "ECHO"):
        with pytest.raises(PolicyDenied):
            find_policy(policy_dir, tool)


def loaded(policy_dir: Path) -> Any:
    return read_policy(policy_dir / "echo.yaml")


def test_args_failing_the_schema_are_invalid_and_name_the_path(policy_dir: Path) -> None:
    with pytest.raises(InvalidRequest, match="case"):
        authorize(loaded(policy_dir), Request(tool="echo", args={"case": 5}))
    with pytest.raises(InvalidRequest, match="Additional properties"):
        authorize(loaded(policy_dir), Request(tool="echo", args={"x": 1}))


def test_too_many_inputs_are_denied(policy_dir: Path) -> None:
    request = Request(tool="echo", inputs={"a": "/x", "b": "/y", "c": "/z"})
    with pytest.raises(PolicyDenied, match="allows 2"):
        authorize(loaded(policy_dir), request)


@pytest.mark.parametrize("name", ["..", "a/b", "-rf", "", "a b", "x" * 65])
def test_bad_input_names_are_invalid(policy_dir: Path, name: str) -> None:
    with pytest.raises(InvalidRequest):
        authorize(loaded(policy_dir), Request(tool="echo", inputs={name: "/x"}))


@pytest.mark.parametrize(
    "text",
    [
        b"not json",
        b'{"tool": "echo", "bogus": 1}',
        b'{"tool": 5}',
        b'{"tool": "echo", "args": []}',
        b'{"tool": "echo", "timeout_s": -1}',
        b'{"tool": "echo", "args": {"x": NaN}}',
        b"[1]",
    ],
)
def test_malformed_requests_are_invalid(text: bytes) -> None:
    with pytest.raises(InvalidRequest):
        parse_request(text)


def test_injection_strings_are_plain_data(policy_dir: Path) -> None:
    for hostile in ["; rm -rf /", "$(id)", "-rf", "a\nb", "\x00", "`id`"]:
        request = Request(tool="echo", args={"case": hostile[:32]})
        authorize(loaded(policy_dir), request)  # valid per schema; never interpreted
