"""eda_analyze: profile reports of the example CSV and of a dbt mart."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT

from .conftest import EXAMPLES, RunTool, ToolRun
from .helpers import assert_progress, assert_refused_before_container, assert_tool_error

pytestmark = pytest.mark.docker

FIXTURES = ROOT / "tests" / "fixtures"


def test_csv_profile_report_and_summary(run_tool: RunTool) -> None:
    run = run_tool(
        "eda_analyze",
        {"format": "csv", "file": "orders.csv", "parse_dates": ["order_date"], "title": "Orders"},
        inputs={"data": EXAMPLES / "data"},
        output="eda-csv",
    )
    assert run.cli.returncode == 0, run.explain()
    summary = run.result["summary"]
    assert summary["rows"] == 300
    assert summary["columns"] == 11
    variables = summary["variables"]
    assert set(variables) >= {"order_id", "order_date", "unit_price", "discount_pct", "note"}
    assert variables["order_date"]["type"] == "DateTime"
    assert variables["order_id"]["type"] == "Numeric"
    assert variables["order_id"]["n_distinct"] == 300
    # discount_pct is blank in about 30% of the rows (examples/data/orders.csv).
    assert 0.2 < variables["discount_pct"]["p_missing"] < 0.4
    assert summary["missing_cells"] > 0
    assert any(a["type"] == "Missing" and a["column"] == "discount_pct" for a in summary["alerts"])
    assert sum(summary["types"].values()) == 11
    # The report and its JSON description were published and are what they claim to be.
    assert run.output is not None
    assert {"profile.html", "profile.json"} <= set(run.outputs)
    html = (run.output / "profile.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html")
    assert "Orders" in html
    description = json.loads((run.output / "profile.json").read_text())
    assert description["table"]["n"] == 300
    assert_progress(run, minimum=4)


def test_duckdb_mart_profile(run_tool: RunTool, dbt_build: ToolRun) -> None:
    assert dbt_build.output is not None
    run = run_tool(
        "eda_analyze",
        {"format": "duckdb", "table": "marts.mart_user_purchases", "write_json": False},
        inputs={"data": dbt_build.output / "dbt.duckdb"},
        output="eda-mart",
    )
    assert run.cli.returncode == 0, run.explain()
    summary = run.result["summary"]
    assert summary["rows"] == 200
    assert summary["variables"]["is_loyal"]["type"] == "Boolean"
    assert set(run.outputs) == {"profile.html"}


def test_unsupported_format_is_refused_before_any_container(run_tool: RunTool) -> None:
    run = run_tool(
        "eda_analyze", {"format": "xlsx"}, inputs={"data": EXAMPLES / "data"}, output="eda-bad"
    )
    assert_refused_before_container(run)


def test_missing_table_fails_listing_the_tables(run_tool: RunTool, dbt_build: ToolRun) -> None:
    assert dbt_build.output is not None
    run = run_tool(
        "eda_analyze",
        {"format": "duckdb", "table": "marts.no_such_table"},
        inputs={"data": dbt_build.output / "dbt.duckdb"},
        output="eda-missing",
    )
    error = assert_tool_error(run)
    assert "marts.no_such_table" in error["message"]
    assert "marts.mart_user_purchases" in error["details"]["tables"]


def test_parquet_profile(run_tool: RunTool) -> None:
    run = run_tool(
        "eda_analyze",
        {"format": "parquet", "max_rows": 120, "write_json": False},
        inputs={"data": EXAMPLES / "data"},
        output="eda-parquet",
    )
    assert run.cli.returncode == 0, run.explain()
    assert run.result["source"]["file"] == "orders.parquet"
    summary = run.result["summary"]
    assert summary["rows"] == 120  # max_rows caps the read
    # Parquet carries the types: the dates arrive as dates, no parsing needed.
    assert summary["variables"]["order_date"]["type"] == "DateTime"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "bad.csv is empty: no header line and no rows"),
        (b"a,b,c\n", "bad.csv has no rows to profile (only the columns: a, b, c)"),
        (b"id,name\n1,caf\xe9\n", "bad.csv is not UTF-8 text (byte 0xe9"),
    ],
    ids=["empty", "header-only", "latin1"],
)
def test_a_csv_without_profilable_rows_fails_saying_what_is_wrong(
    run_tool: RunTool, tools_root: Path, content: bytes, expected: str
) -> None:
    # These used to fail with pandas' or the profiler's words ("No columns to parse from file",
    # "DataFrame is empty. Pleaseprovide ...", "'utf-8' codec can't decode ...") and no file name.
    data = tools_root / f"eda-degenerate-{len(content)}"
    data.mkdir()
    (data / "bad.csv").write_bytes(content)
    run = run_tool("eda_analyze", {}, inputs={"data": data}, output=f"{data.name}-out")
    error = assert_tool_error(run)
    assert expected in error["message"]
    assert run.outputs == {}
    assert (data / "bad.csv").read_bytes() == content


def test_repeated_parquet_column_names_are_profiled_apart(
    run_tool: RunTool, tools_root: Path
) -> None:
    # Parquet allows a name twice (columns a, a: 1..3 and 4..6); the summary used to crash after
    # the report was written (AttributeError: 'DataFrame' object has no attribute 'dtype').
    data = tools_root / "duplicate-columns.parquet"
    shutil.copyfile(FIXTURES / data.name, data)
    run = run_tool(
        "eda_analyze",
        {"format": "parquet", "write_json": False},
        inputs={"data": data},
        output="eda-dupcols",
    )
    assert run.cli.returncode == 0, run.explain()
    variables = run.result["summary"]["variables"]
    assert list(variables) == ["a", "a.1"]  # named the way pandas names them in a CSV
    assert (variables["a"]["mean"], variables["a.1"]["mean"]) == (2.0, 5.0)


def test_a_long_csv_is_profiled_with_the_default_arguments(
    run_tool: RunTool, tools_root: Path
) -> None:
    # 1.5 million rows of three distinct-valued columns (≈30 MB): the JSON description listed
    # every value's count (the profiler's full value counts), ≈1.5 GB at its peak, and the run
    # ended in resource_limit under the policy's 1 GiB; the HTML report never needed them.
    rows = 1_500_000
    data = tools_root / "eda-long"
    data.mkdir()
    with (data / "long.csv").open("w") as out:
        out.write("id,amount,score\n")
        out.writelines(f"{i},{i * 0.37:.2f},{(i * 7919) % rows}\n" for i in range(rows))
    run = run_tool("eda_analyze", {"max_rows": rows}, inputs={"data": data}, output="eda-long-out")
    assert run.cli.returncode == 0, run.explain()
    summary = run.result["summary"]
    assert (summary["rows"], summary["columns"]) == (rows, 3)
    assert summary["variables"]["id"]["n_distinct"] == rows
    assert run.output is not None
    description = json.loads((run.output / "profile.json").read_text())
    assert description["table"]["n"] == rows
    counts = description["variables"]["id"]["value_counts_without_nan"]
    assert 0 < len(counts) <= 100


def test_a_view_over_a_detached_database_fails_saying_so(
    run_tool: RunTool, ingest: ToolRun, tools_root: Path
) -> None:
    # A dbt view over the attached source_db exists in the file but reads a catalog this
    # connection lacks: the error said "table 'main.users_view' not found" and listed it.
    project = tools_root / "view_project"
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text(
        'name: views\nversion: "1.0"\nprofile: views\nmodels:\n  views:\n    +materialized: view\n'
    )
    (project / "models" / "users_view.sql").write_text("select * from source_db.main.users\n")
    assert ingest.output is not None
    dbt = run_tool(
        "dbt_transform",
        {"command": "run"},
        inputs={"project": project, "source_db": ingest.output},
        output="dbt-views",
    )
    assert dbt.cli.returncode == 0, dbt.explain()
    assert dbt.output is not None
    run = run_tool(
        "eda_analyze",
        {"format": "duckdb", "table": "main.users_view"},
        inputs={"data": dbt.output / "dbt.duckdb"},
        output="eda-view",
    )
    error = assert_tool_error(run)
    assert error["message"].startswith("view 'main.users_view' in ")
    assert " cannot be read: " in error["message"]
    assert "source_db" in error["message"]  # DuckDB's words: the catalog it could not find
    assert "make it a table" in error["message"]
    assert "not found in" not in error["message"]


def test_a_date_column_that_does_not_parse_fails_naming_it(
    run_tool: RunTool, tools_root: Path
) -> None:
    # pandas took the format from the first value (01.02.2024 as month.day) and kept the whole
    # column as text when 13.02.2024 did not fit: the profile silently showed Text.
    data = tools_root / "dates"
    data.mkdir()
    (data / "events.csv").write_text(
        "id,iso,local\n1,2024-02-01,01.02.2024\n2,2024-02-13,13.02.2024\n3,,\n"
    )
    run = run_tool(
        "eda_analyze",
        {"parse_dates": ["iso", "local"]},
        inputs={"data": data},
        output="eda-dates",
    )
    error = assert_tool_error(run)
    assert error["message"].startswith("events.csv: parse_dates column(s) 'local' could not")
    assert "ISO 8601" in error["message"]
    assert error["details"]["unparsed"] == {"local": ["01.02.2024", "13.02.2024"]}
    ok = run_tool(
        "eda_analyze",
        {"parse_dates": ["iso"], "write_json": False},
        inputs={"data": data},
        output="eda-dates-iso",
    )
    assert ok.cli.returncode == 0, ok.explain()
    assert ok.result["summary"]["variables"]["iso"]["type"] == "DateTime"


def test_a_tsv_file_is_read_as_tab_separated(run_tool: RunTool, tools_root: Path) -> None:
    # A .tsv counts as a CSV file but was read with ',': one column named "id\tcity", profiled
    # as text, and the run succeeded.
    data = tools_root / "tsv"
    data.mkdir()
    (data / "cities.tsv").write_text("id\tcity\n1\tBerlin\n2\tParis\n3\tRome\n")
    run = run_tool("eda_analyze", {"write_json": False}, inputs={"data": data}, output="eda-tsv")
    assert run.cli.returncode == 0, run.explain()
    variables = run.result["summary"]["variables"]
    assert list(variables) == ["id", "city"]
    assert variables["id"]["type"] == "Numeric"


def test_a_table_named_with_the_files_old_catalog_fails_saying_how_to_name_it(
    run_tool: RunTool, dbt_build: ToolRun
) -> None:
    # dbt's relation names carry the catalog ("dbt".marts.x), but a file input is opened as
    # /inputs/data, catalog "data": the table was "not found" without a word on why.
    assert dbt_build.output is not None
    run = run_tool(
        "eda_analyze",
        {"format": "duckdb", "table": "dbt.marts.mart_user_purchases"},
        inputs={"data": dbt_build.output / "dbt.duckdb"},
        output="eda-catalog",
    )
    error = assert_tool_error(run)
    assert error["message"] == (
        "table 'dbt.marts.mart_user_purchases' not found in data (its catalog is 'data' here, "
        "not 'dbt': name the table as schema.table)"
    )
    assert "marts.mart_user_purchases" in error["details"]["tables"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"table": "marts.mart_user_purchases"}, '"format" is a required property'),
        ({"format": "csv", "table": "marts.x"}, 'at format: "duckdb" was expected'),
        ({"format": "parquet", "sep": ";"}, 'at format: "csv" was expected'),
        ({"format": "duckdb", "table": "t", "parse_dates": ["d"]}, '"csv" was expected'),
    ],
)
def test_an_argument_of_another_format_is_refused_not_ignored(
    run_tool: RunTool, args: dict[str, object], expected: str
) -> None:
    # 'table' without format duckdb read the DuckDB file as a CSV ("data is not UTF-8 text");
    # 'sep' and 'parse_dates' were silently ignored for Parquet and DuckDB.
    run = run_tool(
        "eda_analyze", args, inputs={"data": EXAMPLES / "data"}, output="eda-wrong-format"
    )
    assert_refused_before_container(run)
    assert expected in run.cli.errors[0]["message"]
