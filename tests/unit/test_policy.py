"""Policy files: strict parsing with file/line/key in every error, and authorization."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandbox import policy as policy_module
from sandbox import staging
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
    ("right", "wrong", "key"),
    [("command:", "comand:", "comand"), ("  name: sandbox", "  nme: sandbox", "image.nme")],
)
def test_a_misspelled_required_key_is_named_not_reported_missing(
    right: str, wrong: str, key: str
) -> None:
    # Reported as "command: Field required" before, never naming what the author wrote.
    text = dump().replace(right, wrong, 1)
    assert wrong in text
    with pytest.raises(PolicyFileError) as err:
        parse(text)
    assert err.value.key == key
    assert "unknown key" in str(err.value)


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


NESTED_TOO_DEEP = [
    "a: " + "[" * 50_000,
    "a:\n" + "- " * 1500 + "1\n",
    "a: " + "{b: " * 1500 + "1" + "}" * 1500,
]


@pytest.mark.parametrize("text", NESTED_TOO_DEEP, ids=["flow-seq", "block-seq", "flow-map"])
def test_yaml_nested_too_deeply_is_a_policy_error_not_a_crash(text: str) -> None:
    with pytest.raises(PolicyFileError, match="nest"):
        parse(text)


def test_an_alias_of_a_scalar_is_refused_too() -> None:
    with pytest.raises(PolicyFileError, match="aliases") as err:
        parse(dump().replace("tool: echo", "tool: &t echo\nx: *t"))
    assert err.value.line == dump().splitlines().index("tool: echo") + 1


def test_pyyaml_without_libyaml_parses_and_refuses_alike() -> None:
    """The same verdicts from PyYAML's pure-Python parser (a host whose PyYAML lacks libyaml)."""
    script = """
import json, sys, yaml
del yaml.CSafeLoader
from pathlib import Path
from sandbox.errors import PolicyFileError
from sandbox.policy import parse_policy, _PolicyLoader
assert _PolicyLoader.__mro__[1] is yaml.SafeLoader
valid, *bad = json.load(sys.stdin)
parse_policy(valid.encode(), Path("/p/echo.yaml"))
for text in bad:
    try:
        parse_policy(text.encode(), Path("/p/echo.yaml"))
    except PolicyFileError as exc:
        print(exc)
    else:
        sys.exit("accepted: " + text[:40])
"""
    texts = [dump(), *NESTED_TOO_DEEP, "a: &x [1]\nb: *x\n", "a: 1\na: 1\n"]
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    verdicts = done.stdout.splitlines()
    assert len(verdicts) == 5
    assert all("nest" in line for line in verdicts[:3])
    assert "aliases" in verdicts[3]
    assert "duplicate key" in verdicts[4]


def test_huge_file_is_refused_before_parsing() -> None:
    with pytest.raises(PolicyFileError, match="larger than"):
        parse("a: " + "x" * 300_000)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"user": "0:0"}, "user"),
        ({"user": "root"}, "user"),
        # Docker reads these numerically: uid 0, and gid 0 (the root group).
        ({"user": "00:00"}, "user"),
        ({"user": "65532:00"}, "user"),
        ({"user": "000"}, "user"),
        # The engine refuses ids above 2**31 - 1: every run would fail at create.
        ({"user": "2147483648:1000"}, "user"),
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


def schema_with(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": properties}


def authorize_args(schema: dict[str, Any], args: dict[str, Any]) -> None:
    authorize(parse(dump(args_schema=schema)), Request(tool="echo", args=args))


@pytest.mark.parametrize(
    ("schema", "needle"),
    [
        ({"type": "object", "properties": {"a": {"type": "nope"}}}, "properties/a/type"),
        ({"type": "object", "properties": {"a": {"maxLength": -1}}}, "properties/a/maxLength"),
        ({"type": "object", "properties": {"a": {"pattern": "("}}}, "regex"),
        ({"type": "object", "$ref": "#/$defs/missing"}, "missing"),
        ({"type": "object", "properties": {"a": {"default": "2020-01-01"}}} | {"x": b"y"}, "bytes"),
    ],
)
def test_an_invalid_args_schema_names_where_it_is_wrong(
    schema: dict[str, Any], needle: str
) -> None:
    with pytest.raises(PolicyFileError, match="not a valid JSON Schema") as err:
        parse_policy_data(schema)
    assert err.value.key == "args_schema"
    assert needle in str(err.value)


def parse_policy_data(schema: dict[str, Any]) -> Any:
    """Through YAML, so a value JSON cannot hold (bytes become !!binary) reaches the check."""
    return parse(yaml.dump(policy_data(args_schema=schema), sort_keys=False))


def test_a_policy_s_args_schema_is_compiled_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check at parse compiles it; authorizing reuses that, never a second compile."""
    compiles: list[dict[str, Any]] = []
    real = policy_module.compile_args_schema

    def counting(schema: dict[str, Any]) -> Any:
        compiles.append(schema)
        return real(schema)

    monkeypatch.setattr(policy_module, "compile_args_schema", counting)
    loaded = parse(dump())
    authorize(loaded, Request(tool="echo", args={"case": "x"}))
    authorize(loaded, Request(tool="echo", args={"case": "y"}))
    assert len(compiles) == 1
    data = policy_data()
    del data["args_schema"]
    defaulted = parse(yaml.safe_dump(data))
    authorize(defaulted, Request(tool="echo"))
    assert len(compiles) == 2  # the default schema: compiled at parse, once


def test_a_ref_outside_the_schema_is_refused_without_fetching_it() -> None:
    schema = {"type": "object", "properties": {"a": {"$ref": "http://127.0.0.1:9/a.json"}}}
    with pytest.raises(PolicyFileError, match="[Rr]etriev") as err:
        parse(dump(args_schema=schema))
    assert "a $ref must point inside the schema" in str(err.value)
    assert "(root)" not in str(err.value)  # the engine gives no path for a reference


def test_a_pattern_anchored_at_the_end_refuses_a_trailing_newline() -> None:
    # ECMA-262's `$`, as JSON Schema specifies; Python's `re` would let "abc\n" through.
    schema = schema_with(case={"type": "string", "maxLength": 8, "pattern": "^[a-z]+$"})
    authorize_args(schema, {"case": "abc"})
    with pytest.raises(InvalidRequest, match="does not match"):
        authorize_args(schema, {"case": "abc\n"})


def test_a_boolean_is_not_an_integer_and_formats_are_checked() -> None:
    schema = schema_with(n={"type": "integer"}, day={"type": "string", "format": "date"})
    with pytest.raises(InvalidRequest, match="at n: true is not of type"):
        authorize_args(schema, {"n": True})
    with pytest.raises(InvalidRequest, match="at day:"):
        authorize_args(schema, {"day": "2026-13-01"})
    authorize_args(schema, {"n": 3, "day": "2026-11-29"})


def test_the_shallowest_args_error_is_the_one_reported() -> None:
    schema = schema_with(deep={"type": "object", "properties": {"n": {"type": "integer"}}})
    with pytest.raises(InvalidRequest, match=r"at \(root\): Additional properties") as err:
        authorize_args(schema, {"deep": {"n": "x"}, "bogus": 1})
    assert err.value.details["path"] == "(root)"


def test_args_json_cannot_hold_are_invalid_not_an_internal_error() -> None:
    # Only a library caller can build such a request; the CLI and serve parse JSON.
    with pytest.raises(InvalidRequest, match="not JSON"):
        authorize_args(schema_with(case={"type": "string"}), {"case": b"bytes"})


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


def test_a_root_that_cannot_be_resolved_allows_nothing_and_breaks_no_other_root(
    tmp_path: Path,
) -> None:
    # A symlink loop among the roots failed every run of the tool as an internal error (and
    # crashed `policy check`); it must only allow nothing itself.
    (tmp_path / "loop").symlink_to("loop")
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.csv").write_text("a\n")
    (tmp_path / "echo.yaml").write_text(dump(inputs={"allowed_roots": ["loop", "data"], "max": 2}))
    loaded = read_policy(tmp_path / "echo.yaml")
    assert loaded.allowed_roots == (tmp_path / "loop", data)
    assert staging.resolve_inputs({"a": str(data / "in.csv")}, loaded.allowed_roots)
    with pytest.raises(InvalidRequest, match="symbolic links"):
        staging.resolve_inputs({"a": str(tmp_path / "loop" / "x")}, loaded.allowed_roots)


@pytest.mark.parametrize("image", [{"name": "sandbox/x"}, {"name": "sandbox/x", "id": "latest"}])
def test_an_unpinned_image_says_how_to_pin_it(image: dict[str, str]) -> None:
    # `sandbox images lock` rewrites an id that is there; a missing or non-id value is not one.
    with pytest.raises(PolicyFileError, match="sandbox images lock") as err:
        parse(dump(image=image))
    assert err.value.key == "image.id"
    assert '"sha256:' + "0" * 64 + '"' in str(err.value)


def test_the_ingest_count_limit_is_one_its_timeout_can_read() -> None:
    # source-faker read 250,000 users (plus their purchases) in 92 s on 1 CPU, 200,000 in 117 s on a
    # busy machine. The schema allowed 1,000,000, a run that always hit the 300 s timeout.
    loaded = read_policy(Path(__file__).resolve().parents[2] / "policies" / "pyairbyte_ingest.yaml")
    assert loaded.policy.limits.timeout_s == 300
    assert loaded.args_validator.is_valid({"config": {"count": 250_000}})
    assert not loaded.args_validator.is_valid({"config": {"count": 250_001}})
