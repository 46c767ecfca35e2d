"""dagster_orchestrate: the example definitions over the dbt marts, in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import EXAMPLES, RunTool, ToolRun
from .helpers import assert_progress, assert_refused_before_container, assert_tool_error

pytestmark = pytest.mark.docker

FAILING_DEFINITIONS = """
import dagster as dg


@dg.asset
def fine() -> int:
    return 1


@dg.asset
def broken(fine: int) -> int:
    raise ValueError("the source table is empty")


@dg.asset
def downstream(broken: int) -> int:
    return broken


defs = dg.Definitions(assets=[fine, broken, downstream])
"""


@pytest.fixture(scope="session")
def materialize(run_tool: RunTool, dbt_build: ToolRun) -> ToolRun:
    assert dbt_build.status == "ok", dbt_build.explain()
    assert dbt_build.output is not None
    return run_tool(
        "dagster_orchestrate",
        {},
        inputs={
            "definitions": EXAMPLES / "dagster",
            "warehouse": dbt_build.output / "dbt.duckdb",
        },
        output="dagster",
    )


def test_materializes_every_asset_with_metadata(materialize: ToolRun) -> None:
    assert materialize.cli.returncode == 0, materialize.explain()
    result = materialize.result
    assets = result["assets"]
    assert set(assets) == {"segment_summary", "top_customers", "sales_report"}
    assert all(a["status"] == "materialized" for a in assets.values())
    assert result["steps"] == dict.fromkeys(assets, "success")
    assert assets["top_customers"]["metadata"]["rows"] == 10
    assert 1 <= assets["segment_summary"]["metadata"]["segments"] <= 4
    assert assets["sales_report"]["metadata"]["files"] == [
        "sales_report.json",
        "segment_summary.csv",
    ]
    assert_progress(materialize, minimum=6)


def test_report_asset_wrote_its_files(materialize: ToolRun) -> None:
    assert materialize.output is not None
    assert {"sales_report.json", "segment_summary.csv"} <= set(materialize.outputs)
    report = json.loads((materialize.output / "sales_report.json").read_text())
    assert len(report["top_customers"]) == 10
    segments = {row["segment"] for row in report["segments"]}
    assert segments <= {"mainstream", "premium", "luxury", "unknown"}
    # Purchases across segments add up to the purchased rows of the 200-user ingest.
    assert sum(row["products"] for row in report["segments"]) == 100


def test_selection_outside_the_schema_is_refused(run_tool: RunTool) -> None:
    run = run_tool(
        "dagster_orchestrate",
        {"select": ["../../etc/passwd"]},
        inputs={"definitions": EXAMPLES / "dagster"},
    )
    assert_refused_before_container(run)


def test_failing_asset_reports_the_step_error(run_tool: RunTool, tools_root: Path) -> None:
    definitions = tools_root / "failing_definitions"
    definitions.mkdir()
    (definitions / "definitions.py").write_text(FAILING_DEFINITIONS)
    run = run_tool("dagster_orchestrate", {}, inputs={"definitions": definitions})
    error = assert_tool_error(run)
    assert "step broken failed" in error["message"]
    assert "ValueError: the source table is empty" in error["message"]
    details = error["details"]
    assert details["steps"] == {"fine": "success", "broken": "failed"}
    assert details["assets"]["fine"]["status"] == "materialized"
    assert details["assets"]["broken"]["status"] == "failed"
    assert details["assets"]["downstream"]["status"] == "not_run"
    [failure] = details["failures"]
    assert "the source table is empty" in failure["stack"] or failure["causes"]


ONE_ASSET = "import dagster as dg\n\n\n@dg.asset\ndef one() -> int:\n    return 1\n\n\n"


@pytest.mark.parametrize(
    "definitions",
    [
        # The input is mounted as /inputs/definitions, without the .py suffix; importlib found
        # no loader for it ("cannot load /inputs/definitions as a Python module").
        "defs = dg.Definitions(assets=[one])\n",
        # `@dg.definitions` (create-dagster's scaffold) failed: "must define exactly one
        # dagster.Definitions (found 0)".
        "@dg.definitions\ndef defs() -> dg.Definitions:\n    return dg.Definitions(assets=[one])\n",
    ],
    ids=["definitions-object", "definitions-function"],
)
def test_the_definitions_input_may_be_one_file(
    run_tool: RunTool, tools_root: Path, definitions: str
) -> None:
    path = tools_root / f"single_file_definitions_{len(definitions)}.py"
    path.write_text(ONE_ASSET + definitions)
    run = run_tool("dagster_orchestrate", {}, inputs={"definitions": path})
    assert run.cli.returncode == 0, run.explain()
    assert run.result["assets"]["one"]["status"] == "materialized"


def test_select_with_a_job_is_refused_not_ignored(run_tool: RunTool) -> None:
    # A job's assets are fixed by its definition: `select` was silently dropped and the run
    # materialized whatever the job holds, reported ok.
    run = run_tool(
        "dagster_orchestrate",
        {"job": "summary_job", "select": ["top_customers"]},
        inputs={"definitions": EXAMPLES / "dagster"},
    )
    assert_refused_before_container(run)
    assert "job" in run.cli.errors[0]["message"]
    assert "select" in run.cli.errors[0]["message"]


CHECKED_DEFINITIONS = """
import dagster as dg


@dg.asset
def orders() -> int:
    return -5


@dg.asset_check(asset=orders, blocking={blocking})
def orders_not_negative(orders: int) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=orders >= 0, metadata={{"value": orders}})


@dg.asset
def report(orders: int) -> int:
    return orders


defs = dg.Definitions(assets=[orders, report], asset_checks=[orders_not_negative])
"""


@pytest.mark.parametrize("blocking", [True, False])
def test_asset_checks_run_and_a_blocking_one_blocks(
    run_tool: RunTool, tools_root: Path, blocking: bool
) -> None:
    # The assets were materialized without the definitions' @asset_check functions: a failing
    # check never ran, a blocking one never stopped its downstream assets, the run succeeded.
    definitions = tools_root / f"checked_{blocking}.py"
    definitions.write_text(CHECKED_DEFINITIONS.format(blocking=blocking))
    run = run_tool("dagster_orchestrate", {}, inputs={"definitions": definitions})
    check = {
        "passed": False,
        "severity": "ERROR",
        "description": None,
        "metadata": {"value": -5},
    }
    if blocking:
        error = assert_tool_error(run)
        assert "orders_not_negative" in error["message"]
        assert error["details"]["checks"] == {"orders:orders_not_negative": check}
        assert error["details"]["assets"]["report"]["status"] == "not_run"
    else:
        assert run.cli.returncode == 0, run.explain()
        assert run.result["checks"] == {"orders:orders_not_negative": check}
        assert run.result["assets"]["report"]["status"] == "materialized"


PARTITIONED_DEFINITIONS = """
import os
from pathlib import Path

import dagster as dg

days = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-04")


@dg.asset(partitions_def=days)
def daily(context: dg.AssetExecutionContext) -> None:
    day = context.partition_key
    Path(os.environ["SANDBOX_OUTPUT_DIR"], f"{day}.txt").write_text(day)


@dg.asset
def plain() -> int:
    return 1


daily_job = dg.define_asset_job("daily_job", selection=[daily], partitions_def=days)

defs = dg.Definitions(assets=[daily, plain], jobs=[daily_job])
"""


def test_partitioned_assets_run_for_the_partition_given(
    run_tool: RunTool, tools_root: Path
) -> None:
    # There was no way to pass a partition key: a partitioned asset failed inside with
    # "Cannot access partition_key for a non-partitioned run".
    definitions = tools_root / "partitioned.py"
    definitions.write_text(PARTITIONED_DEFINITIONS)
    inputs = {"definitions": definitions}
    run = run_tool(
        "dagster_orchestrate",
        {"select": ["daily"], "partition": "2024-01-02"},
        inputs=inputs,
        output="dagster-partition",
    )
    assert run.cli.returncode == 0, run.explain()
    assert run.result["assets"]["daily"]["status"] == "materialized"
    assert run.output is not None
    assert (run.output / "2024-01-02.txt").read_text() == "2024-01-02"
    job = run_tool(
        "dagster_orchestrate",
        {"job": "daily_job", "partition": "2024-01-03"},
        inputs=inputs,
        output="dagster-partition-job",
    )
    assert job.cli.returncode == 0, job.explain()
    assert job.output is not None
    assert sorted(p.name for p in job.output.iterdir()) == ["2024-01-03.txt"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"select": ["daily"]}, "the selected assets are partitioned"),
        ({"job": "daily_job"}, "job 'daily_job' is partitioned"),
        ({"select": ["plain"], "partition": "2024-01-02"}, "but the selected assets are not"),
    ],
)
def test_a_partition_missing_or_out_of_place_fails_saying_so(
    run_tool: RunTool, tools_root: Path, args: dict[str, object], expected: str
) -> None:
    definitions = tools_root / "partitioned_bad.py"
    definitions.write_text(PARTITIONED_DEFINITIONS)
    run = run_tool("dagster_orchestrate", args, inputs={"definitions": definitions})
    error = assert_tool_error(run)
    assert expected in error["message"]
    if "partition" not in args:
        assert "pass 'partition' with one key, e.g. '2024-01-01'" in error["message"]
        assert error["details"]["partition_keys"] == ["2024-01-01", "2024-01-02", "2024-01-03"]


@pytest.mark.parametrize("init", ["", "from .definitions import defs\n"])
def test_a_definitions_package_may_use_relative_imports(
    run_tool: RunTool, tools_root: Path, init: str
) -> None:
    # A package as Dagster scaffolds it (`from .assets import ...`) failed to load: "attempted
    # relative import with no known parent package".
    package = tools_root / f"package_{len(init)}"
    package.mkdir()
    (package / "__init__.py").write_text(init)
    (package / "assets.py").write_text(
        "import dagster as dg\n\n\n@dg.asset\ndef one() -> int:\n    return 1\n"
    )
    (package / "definitions.py").write_text(
        "import dagster as dg\n\nfrom .assets import one\n\ndefs = dg.Definitions(assets=[one])\n"
    )
    run = run_tool("dagster_orchestrate", {}, inputs={"definitions": package})
    assert run.cli.returncode == 0, run.explain()
    assert run.result["assets"]["one"]["status"] == "materialized"


def test_an_output_too_large_for_the_tmpfs_fails_saying_where_it_went(
    run_tool: RunTool, tools_root: Path
) -> None:
    # The default IO manager pickles asset outputs under /tmp (a 64 MiB tmpfs): the step failed
    # with a bare "OSError: [Errno 28] No space left on device".
    definitions = tools_root / "big_output.py"
    definitions.write_text(
        "import dagster as dg\n\n\n@dg.asset\ndef big() -> bytes:\n"
        "    return b'x' * (80 * 1024 * 1024)\n\n\ndefs = dg.Definitions(assets=[big])\n"
    )
    run = run_tool("dagster_orchestrate", {}, inputs={"definitions": definitions})
    error = assert_tool_error(run)
    assert error["message"].startswith("step big failed: OSError: [Errno 28]")
    message = error["message"]
    assert "where Dagster's default IO manager stores every asset output, is a 64 MiB" in message
    assert "SANDBOX_OUTPUT_DIR" in message


TABLE_METADATA_DEFINITIONS = """
import dagster as dg

schema = dg.TableSchema(columns=[dg.TableColumn("id", "int"), dg.TableColumn("name", "str")])


@dg.asset
def people() -> dg.MaterializeResult:
    return dg.MaterializeResult(
        metadata={
            "dagster/column_schema": schema,
            "sample": dg.MetadataValue.table(
                records=[dg.TableRecord({"id": 1, "name": "ada"})], schema=schema
            ),
        }
    )


defs = dg.Definitions(assets=[people])
"""


def test_table_and_schema_metadata_are_reported(run_tool: RunTool, tools_root: Path) -> None:
    # A column schema (TableSchema of TableColumn records) failed a successful run when its
    # metadata was read: "Exception: Iteration is not allowed on `@record` TableSchema."
    definitions = tools_root / "table_metadata.py"
    definitions.write_text(TABLE_METADATA_DEFINITIONS)
    run = run_tool("dagster_orchestrate", {}, inputs={"definitions": definitions})
    assert run.cli.returncode == 0, run.explain()
    metadata = run.result["assets"]["people"]["metadata"]
    columns = metadata["dagster/column_schema"]["columns"]
    assert [(c["name"], c["type"]) for c in columns] == [("id", "int"), ("name", "str")]
    assert metadata["sample"]["records"] == [{"data": {"id": 1, "name": "ada"}}]
