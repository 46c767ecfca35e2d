"""pyairbyte_ingest: source-faker → DuckDB file, offline, through the real CLI."""

from __future__ import annotations

import pytest

from .conftest import RunTool, ToolRun
from .helpers import assert_progress, assert_refused_before_container

pytestmark = pytest.mark.docker


def test_ingest_writes_every_stream_to_duckdb(ingest: ToolRun) -> None:
    assert ingest.cli.returncode == 0, ingest.explain()
    assert ingest.status == "ok"
    result = ingest.result
    # source-faker: `count` users, a fixed catalogue of 100 products, and (for seed 42) 200
    # purchases.
    assert result["streams"] == {"users": 200, "products": 100, "purchases": 200}
    assert result["total_records"] == 500
    assert result["database"] == "ingest.duckdb"
    assert "ingest.duckdb" in ingest.outputs
    assert ingest.outputs["ingest.duckdb"]["bytes"] == result["bytes"] > 0
    assert ingest.output is not None
    header = (ingest.output / "ingest.duckdb").read_bytes()[:16]
    assert header[8:12] == b"DUCK", "not a DuckDB database file"
    # No write-ahead log left behind: the database was closed cleanly.
    assert not (ingest.output / "ingest.duckdb.wal").exists()
    assert_progress(ingest, minimum=4)
    assert any("written" in f["message"] for f in ingest.cli.of_type("progress"))


def test_unknown_stream_is_refused_before_any_container(run_tool: RunTool) -> None:
    run = run_tool("pyairbyte_ingest", {"streams": ["users", "orders"]}, output="ingest-bad")
    assert_refused_before_container(run)


def test_config_outside_the_connector_spec_is_refused(run_tool: RunTool) -> None:
    run = run_tool(
        "pyairbyte_ingest", {"config": {"count": 10, "api_key": "x"}}, output="ingest-bad2"
    )
    assert_refused_before_container(run)
