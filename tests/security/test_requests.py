"""Hostile requests and policies: refused before any container exists, with the contract's
status and exit code; argument strings reach the script verbatim and never a shell."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from .cases import CASES, HOSTILE_POLICIES
from .conftest import SecurityEnv, assert_exit, assert_host_invariants

pytestmark = pytest.mark.docker


def assert_refused_before_any_container(env: SecurityEnv, case: str, status: str, code: int) -> str:
    result = env.result(case)
    assert_exit(result, status, code)
    assert [f["type"] for f in result.frames] == ["error", "exit"], result.describe()
    assert result.exit["exit_code"] is None
    assert_host_invariants(env, result)
    return str(result.errors[0]["message"])


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("input_dotdot", "denied", 3),
        ("input_tilde", "denied", 3),
        ("input_symlink_out", "denied", 3),
        ("input_missing", "invalid_request", 2),
        ("input_etc", "denied", 3),
        ("input_proc_root", "denied", 3),
        ("input_bad_name", "invalid_request", 2),
        ("input_nul", "invalid_request", 2),
        ("input_docker_socket", "denied", 3),
        ("input_dir_with_docker_socket", "denied", 3),
        ("args_huge_string_too_long", "invalid_request", 2),
        ("args_unknown_key", "invalid_request", 2),
        ("tool_name_injection", "denied", 3),
        ("tool_name_traversal", "denied", 3),
        ("timeout_above_policy", "denied", 3),
        ("timeout_nan", "invalid_request", 2),
        ("request_unknown_key", "invalid_request", 2),
        ("request_nan", "invalid_request", 2),
        ("request_deep_nesting", "invalid_request", 2),
    ],
)
def test_hostile_request_is_refused_before_any_container(
    security_env: SecurityEnv, case: str, status: str, code: int
) -> None:
    assert_refused_before_any_container(security_env, case, status, code)


def test_input_dir_holding_a_mount_point_is_denied(security_env: SecurityEnv) -> None:
    # The engine (API 1.41) makes only the top of a bind mount read-only; a mount below an
    # input would stay writable, so such an input is refused.
    assert os.path.ismount(security_env.mount_root / "inner"), "test setup needs root to mount"
    message = assert_refused_before_any_container(security_env, "input_mount_point", "denied", 3)
    assert "mount point" in message


@pytest.mark.parametrize("case", ["args_shell_metachars", "args_leading_dash", "args_newlines_nul"])
def test_argument_strings_reach_the_script_verbatim(security_env: SecurityEnv, case: str) -> None:
    result = security_env.result(case)
    assert_exit(result, "ok", 0)
    assert result.result["args"] == CASES[case].args
    assert_host_invariants(security_env, result)


def test_huge_argument_string_arrives_whole(security_env: SecurityEnv) -> None:
    result = security_env.result("args_huge_string_ok")
    assert_exit(result, "ok", 0)
    text = json.dumps(CASES["args_huge_string_ok"].args, sort_keys=True, ensure_ascii=False)
    assert result.result == {
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "chars": len(text),
    }
    assert_host_invariants(security_env, result)


@pytest.mark.parametrize("variant", sorted(HOSTILE_POLICIES))
def test_hostile_policy_file_is_rejected_naming_the_file(
    security_env: SecurityEnv, variant: str
) -> None:
    message = assert_refused_before_any_container(
        security_env, f"policy_{variant}", "invalid_request", 2
    )
    assert "testkit.yaml" in message
    assert not Path("/tmp/pwned").exists()  # the python tag was never constructed


def test_memory_limit_that_never_fits_is_refused_with_a_clear_message(
    security_env: SecurityEnv,
) -> None:
    result = security_env.result("memory_never_fits")
    assert_exit(result, "infrastructure_error", 6)
    assert [f["type"] for f in result.frames] == ["error", "exit"]
    error = result.errors[0]
    assert "memory limit (1048576 MiB) does not fit" in error["message"]
    assert "fix" in error["details"]
    assert_host_invariants(security_env, result)


def test_audit_log_holds_one_record_per_run_and_verifies(security_env: SecurityEnv) -> None:
    """After every case of this runtime: one record each, chain intact, no secret inside."""
    from sandbox.audit import verify

    results = [security_env.result(name) for name in CASES]
    log = security_env.audit_log
    verification = verify(log)
    assert verification.ok, verification.problems
    records = [json.loads(line) for line in log.read_text().splitlines()]
    by_run = {r["run_id"]: r for r in records}
    assert len(records) == len(results)
    for result in results:
        record = by_run[result.run_id]
        assert record["status"] == result.exit["status"]
        assert record["exit_code"] == result.exit["exit_code"]
    text = log.read_text()
    assert "hunter2" not in text
    identity = by_run[security_env.result("identity").run_id]
    assert identity["container_created"] is True
    assert identity["runtime"] == security_env.runtime
    assert "TESTKIT" in identity["env_keys"]
    assert '"1"' not in json.dumps(identity["env_keys"])
    # The output directory, and under runc the run's stdout pipe (read-only, see test_escape).
    piped = [("/run/sandbox/stdout", True)] if security_env.runtime == "runc" else []
    assert [(m["target"], m["read_only"]) for m in identity["mounts"]] == [
        ("/output", False),
        *piped,
    ]
    refused = by_run[security_env.result("input_etc").run_id]
    assert refused["container_created"] is False
    assert refused["error_kind"] == "PolicyDenied"
