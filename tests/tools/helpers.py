"""Assertions shared by the tool tests."""

from __future__ import annotations

from typing import Any

from .conftest import ToolRun


def assert_refused_before_container(run: ToolRun, status: str = "invalid_request") -> None:
    """An invalid request ends with exit 2 and never creates a container."""
    assert run.cli.returncode == 2, run.explain()
    assert run.status == status
    assert run.cli.of_type("started") == [], "a container was started for an invalid request"
    assert run.cli.exit["exit_code"] is None
    assert [e["kind"] for e in run.cli.errors] == ["InvalidRequest"]


def assert_progress(run: ToolRun, minimum: int = 2) -> None:
    """The tool reported progress while it worked, with fractions in 0..1."""
    progress = run.cli.of_type("progress")
    assert len(progress) >= minimum, [f.get("message") for f in progress]
    fractions = [f["fraction"] for f in progress if "fraction" in f]
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert fractions[-1] == 1.0


def assert_tool_error(run: ToolRun) -> dict[str, Any]:
    """The run failed as the tool's own error (exit 1, one ``ToolError`` frame): that error."""
    assert run.cli.returncode == 1, run.explain()
    assert run.status == "tool_error"
    [error] = run.cli.errors
    assert error["kind"] == "ToolError"
    return dict(error)
