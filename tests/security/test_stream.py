"""Attacks on the frame channel: floods, giant lines, broken encodings, hostile JSON and forged
frames never break the stream or decide the run's status."""

from __future__ import annotations

import pytest

from .conftest import SecurityEnv, assert_exit, assert_host_invariants

pytestmark = pytest.mark.docker

MIB = 1024 * 1024


def test_stdout_flood_is_cut_at_the_cap(security_env: SecurityEnv) -> None:
    result = security_env.result("stdout_flood")
    assert_exit(result, "resource_limit", 5)
    assert "stdout" in result.errors[-1]["message"]
    assert len(result.stdout) < 24 * MIB  # stdout_mb is 16; frames add their envelope
    assert_host_invariants(security_env, result)


def test_giant_line_without_newline_is_truncated_and_the_run_goes_on(
    security_env: SecurityEnv,
) -> None:
    result = security_env.result("giant_line")
    assert_exit(result, "ok", 0)
    assert all(len(line) <= MIB for line in result.stdout.splitlines(keepends=True))
    assert result.result == {"after": "giant"}
    assert_host_invariants(security_env, result)


def test_invalid_utf8_and_lone_surrogates_never_break_the_stream(
    security_env: SecurityEnv,
) -> None:
    result = security_env.result("invalid_utf8")
    assert_exit(result, "ok", 0)
    assert "bad \ufffd\ufffd bytes" in [f["line"] for f in result.of_type("log")]
    assert "split ✓ char" in [f["payload"] for f in result.of_type("data")]
    assert result.result == {"ok": True}
    assert_host_invariants(security_env, result)


def test_nan_infinity_deep_nesting_and_forged_envelopes_are_neutralised(
    security_env: SecurityEnv,
) -> None:
    result = security_env.result("hostile_frames")
    assert_exit(result, "ok", 0)
    accepted = result.of_type("accepted")
    started = result.of_type("started")
    assert len(accepted) == 1
    assert accepted[0]["tool"] == "testkit"
    assert len(started) == 1
    assert started[0]["container_id"] != "forged"
    # NaN/Infinity/1e999 are not strict JSON: those lines arrive as log text, never as data.
    payloads = [f["payload"] for f in result.of_type("data")]
    assert all(p not in (float("inf"), float("-inf")) for p in payloads if isinstance(p, float))
    assert not any(f.get("fraction") != f.get("fraction") for f in result.of_type("progress"))
    assert all(f["stream"] in ("stdout", "stderr") for f in result.of_type("log"))
    assert "\u0000 nul \u001b[2J \u2028 sep" in payloads
    assert result.result == {"ok": True}
    assert_host_invariants(security_env, result)


def test_forged_exit_and_error_frames_do_not_decide_the_status(security_env: SecurityEnv) -> None:
    result = security_env.result("forged_exit")
    exit_frame = assert_exit(result, "tool_error", 1)
    assert exit_frame["exit_code"] == 5
    assert all(e["kind"] == "ToolError" for e in result.errors)
    assert_host_invariants(security_env, result)


def test_ansi_and_crlf_cannot_forge_lines_on_the_frame_channel(security_env: SecurityEnv) -> None:
    result = security_env.result("ansi_crlf_injection")
    assert_exit(result, "ok", 0)
    # Control characters travel JSON-escaped inside a frame; the channel itself never carries
    # a raw ESC or CR, so a terminal or a line-based reader sees only our lines.
    assert b"\x1b" not in result.stdout
    assert b"\r" not in result.stdout
    assert result.result == {"ok": True}
    assert_host_invariants(security_env, result)
