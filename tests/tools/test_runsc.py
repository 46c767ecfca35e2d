"""The demo pipeline under gVisor: the four policies switched to ``runtime: runsc``, nothing
else changed. Every tool starts threads (DuckDB, dbt's pool, Dagster's executor, the
profiler), which no tool could under this runsc build until the launcher answered ``clone3``
with ENOSYS (docs/security.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import PolicyDir

from .conftest import EXAMPLES, TOOLS, RunTool, ToolRun, build_example_project, tool_runner

pytestmark = [pytest.mark.docker, pytest.mark.runsc]


@pytest.fixture(scope="module")
def run_runsc(tool_policies: PolicyDir, tools_root: Path) -> RunTool:
    """``run_tool`` against copies of the pinned policies with ``runtime: runsc``."""
    policies = PolicyDir(path=tools_root / "policies-runsc", roots=tool_policies.roots)
    policies.path.mkdir()
    for tool in TOOLS:
        policies.write(tool, {**tool_policies.read(tool), "runtime": "runsc"})
    return tool_runner(policies.path, tools_root)


@pytest.fixture(scope="module")
def ingest_runsc(run_runsc: RunTool) -> ToolRun:
    args = {"source": "source-faker", "config": {"count": 50, "seed": 7}, "database": "in.duckdb"}
    return run_runsc("pyairbyte_ingest", args, output="runsc-ingest")


@pytest.fixture(scope="module")
def dbt_runsc(run_runsc: RunTool, ingest_runsc: ToolRun) -> ToolRun:
    return build_example_project(run_runsc, ingest_runsc, "runsc-dbt")


def test_ingest_under_runsc(ingest_runsc: ToolRun) -> None:
    assert ingest_runsc.cli.returncode == 0, ingest_runsc.explain()
    assert ingest_runsc.result["streams"]["users"] == 50
    assert "in.duckdb" in ingest_runsc.outputs


def test_dbt_build_under_runsc(dbt_runsc: ToolRun) -> None:
    assert dbt_runsc.cli.returncode == 0, dbt_runsc.explain()
    nodes = dbt_runsc.result["nodes"]
    assert nodes, "no node ran"
    assert all(n["status"] in ("success", "pass") for n in nodes), nodes


def test_dagster_under_runsc(run_runsc: RunTool, dbt_runsc: ToolRun) -> None:
    assert dbt_runsc.output is not None
    run = run_runsc(
        "dagster_orchestrate",
        {},
        inputs={"definitions": EXAMPLES / "dagster", "warehouse": dbt_runsc.output / "dbt.duckdb"},
        output="runsc-dagster",
    )
    assert run.cli.returncode == 0, run.explain()
    assets = run.result["assets"]
    assert assets
    assert all(a["status"] == "materialized" for a in assets.values()), assets


def test_eda_under_runsc(run_runsc: RunTool) -> None:
    run = run_runsc(
        "eda_analyze",
        {"format": "csv", "file": "orders.csv", "title": "Orders"},
        inputs={"data": EXAMPLES / "data"},
        output="runsc-eda",
    )
    assert run.cli.returncode == 0, run.explain()
    assert run.result["summary"]["rows"] == 300
