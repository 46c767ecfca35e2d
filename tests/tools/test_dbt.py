"""dbt_transform: the example project (mounted read-only) over the ingested DuckDB file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import PolicyDir, run_cli

from .conftest import EXAMPLES, RUN_TIMEOUT, RunTool, ToolRun
from .helpers import assert_progress, assert_refused_before_container, assert_tool_error

pytestmark = pytest.mark.docker

MODELS = {
    "model.shop.stg_users": 200,
    "model.shop.stg_products": 100,
    "model.shop.stg_purchases": 200,
    "model.shop.mart_user_purchases": 200,
    "model.shop.mart_product_sales": 100,
}


def test_build_runs_every_node_over_the_ingest(dbt_build: ToolRun) -> None:
    assert dbt_build.cli.returncode == 0, dbt_build.explain()
    result = dbt_build.result
    assert result["command"] == "build"
    assert result["project"] == "shop"
    nodes = {n["unique_id"]: n for n in result["nodes"]}
    # Every model built with the expected row count, the seed loaded, every data test passed.
    for unique_id, rows in MODELS.items():
        assert nodes[unique_id]["status"] == "success", nodes[unique_id]
        assert nodes[unique_id]["rows"] == rows, unique_id
    assert nodes["seed.shop.make_segments"]["rows_affected"] == 34
    # Counted as well (run_results.json has no relation name for a seed; it was null).
    assert nodes["seed.shop.make_segments"]["rows"] == 34
    assert nodes["seed.shop.make_segments"]["relation_name"] == '"dbt"."reference"."make_segments"'
    tests = [n for uid, n in nodes.items() if uid.startswith("test.")]
    assert len(tests) >= 15
    assert all(t["status"] == "pass" and t["failures"] == 0 for t in tests)
    assert result["counts"] == {"success": 6, "pass": len(tests)}
    assert all(n["timing"] and n["execution_time_s"] >= 0 for n in nodes.values())
    assert_progress(dbt_build, minimum=len(nodes))


def test_build_publishes_database_and_artifacts(dbt_build: ToolRun) -> None:
    assert dbt_build.output is not None
    outputs = dbt_build.outputs
    for path in ("dbt.duckdb", "artifacts/run_results.json", "artifacts/manifest.json"):
        assert path in outputs, sorted(outputs)
    run_results = json.loads((dbt_build.output / "artifacts/run_results.json").read_text())
    assert len(run_results["results"]) == len(dbt_build.result["nodes"])
    manifest = json.loads((dbt_build.output / "artifacts/manifest.json").read_text())
    assert "model.shop.mart_product_sales" in manifest["nodes"]
    # The read-only project stayed clean: dbt wrote target/ and logs/ elsewhere.
    project = EXAMPLES / "dbt_project"
    assert not (project / "target").exists()
    assert not (project / "logs").exists()


def test_test_command_continues_from_an_earlier_build(
    run_tool: RunTool, ingest: ToolRun, dbt_build: ToolRun
) -> None:
    assert dbt_build.output is not None
    assert ingest.output is not None
    run = run_tool(
        "dbt_transform",
        {"command": "test", "select": ["marts"]},
        inputs={
            "project": EXAMPLES / "dbt_project",
            "source_db": ingest.output,
            "base_db": dbt_build.output / "dbt.duckdb",
        },
        output="dbt-test",
    )
    assert run.cli.returncode == 0, run.explain()
    nodes = run.result["nodes"]
    assert nodes, "no tests selected"
    assert all(n["unique_id"].startswith("test.") and n["status"] == "pass" for n in nodes)
    assert "test.shop.assert_returns_not_above_purchases" in {n["unique_id"] for n in nodes}


def test_unknown_command_is_refused_before_any_container(run_tool: RunTool) -> None:
    run = run_tool(
        "dbt_transform",
        {"command": "deps"},
        inputs={"project": EXAMPLES / "dbt_project"},
        output="dbt-bad",
    )
    assert_refused_before_container(run)


@pytest.mark.parametrize("database", ["system.duckdb", "Temp.duckdb"])
def test_a_database_named_like_a_duckdb_catalog_fails_saying_so(
    run_tool: RunTool, ingest: ToolRun, database: str
) -> None:
    # DuckDB's own words were all a user got: "Cannot create schema in system catalog".
    assert ingest.output is not None
    run = run_tool(
        "dbt_transform",
        {"command": "build", "database": database},
        inputs={"project": EXAMPLES / "dbt_project", "source_db": ingest.output},
        output=f"dbt-{database}",
    )
    error = assert_tool_error(run)
    assert "DuckDB reserves the catalog name" in error["message"]
    assert "choose another file name" in error["message"]
    assert run.outputs == {}


def test_broken_model_fails_naming_the_model(
    run_tool: RunTool, ingest: ToolRun, tools_root: Path
) -> None:
    project = tools_root / "broken_project"
    shutil.copytree(EXAMPLES / "dbt_project", project)
    (project / "models" / "marts" / "broken_model.sql").write_text(
        "select no_such_column from {{ ref('stg_users') }}\n"
    )
    assert ingest.output is not None
    run = run_tool(
        "dbt_transform",
        {"command": "build"},
        inputs={"project": project, "source_db": ingest.output},
        output="dbt-broken",
    )
    error = assert_tool_error(run)
    assert "model.shop.broken_model" in error["message"]
    assert "no_such_column" in error["message"]  # dbt's own (DuckDB binder) error
    assert error["details"]["failed"] == ["model.shop.broken_model"]
    assert error["traceback"], "a ToolError carries the script's traceback"
    statuses = {n["unique_id"]: n["status"] for n in error["details"]["nodes"]}
    assert statuses["model.shop.stg_users"] == "success"
    # A failed run publishes nothing (the coordinator sets its staging directory aside).
    assert run.outputs == {}


def test_a_project_whose_node_list_overflows_a_frame_still_succeeds(
    tool_policies: PolicyDir, tools_root: Path, tmp_path: Path
) -> None:
    # One entry per node in the result frame: about 420 bytes each, so a project of a few
    # thousand nodes overflowed the 1 MiB line and a completed dbt run ended in ProtocolError.
    # Here the policy lowers the line to 64 KiB and the project has 200 models.
    policies = PolicyDir(path=tmp_path / "policies", roots=tool_policies.roots)
    policies.path.mkdir()
    data = tool_policies.read("dbt_transform")
    data["limits"]["frame_kb"] = 64
    policies.write("dbt_transform", data)
    project = tools_root / "many_models"
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text(
        'name: many\nversion: "1.0"\nprofile: many\nmodels:\n  many:\n    +materialized: view\n'
    )
    for n in range(200):
        (project / "models" / f"model_number_{n:03}.sql").write_text(f"select {n} as x\n")
    output = tools_root / "dbt-many"
    cli = run_cli(
        ["run", "dbt_transform", "--args", '{"command": "compile"}']
        + ["--input", f"project={project}", "--output", str(output)],
        policies=policies.path,
        timeout=RUN_TIMEOUT,
    )
    assert cli.returncode == 0, cli.errors
    result = cli.result
    assert result["counts"] == {"success": 200}
    shown = result["nodes"]
    assert 0 < len(shown) < 200
    assert result["nodes_omitted"] == 200 - len(shown)
    # Every node is in the published run_results.json.
    run_results = json.loads((output / "artifacts" / "run_results.json").read_text())
    assert len(run_results["results"]) == 200


def test_a_project_requiring_another_dbt_version_fails_saying_so(
    run_tool: RunTool, tools_root: Path
) -> None:
    # DBT_VERSION_CHECK=false in the policy skipped `require-dbt-version`: a project pinned to
    # another dbt ran silently under 1.11.
    project = tools_root / "needs_newer_dbt"
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text(
        'name: newer\nversion: "1.0"\nprofile: newer\nrequire-dbt-version: ">=99.0.0"\n'
    )
    (project / "models" / "m.sql").write_text("select 1 as x\n")
    run = run_tool(
        "dbt_transform", {"command": "run"}, inputs={"project": project}, output="dbt-newer"
    )
    error = assert_tool_error(run)
    assert ">=99.0.0" in error["message"]
    assert "1.11" in error["message"]
    assert run.outputs == {}


@pytest.mark.parametrize(
    "profile_line",
    ["", "profile: \"{{ env_var('DBT_PROFILE', 'analytics') }}\"\n"],
    ids=["no-profile-key", "profile-from-env-var"],
)
def test_a_project_without_a_plain_profile_name_runs_on_the_generated_profile(
    run_tool: RunTool, tools_root: Path, profile_line: str
) -> None:
    # dbt refused a project without `profile:` ("no profile was specified") and rendered an
    # env_var() profile to a name the generated profiles.yml did not have.
    name = "noprofile" if not profile_line else "envprofile"
    project = tools_root / name
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text(f'name: {name}\nversion: "1.0"\n{profile_line}')
    (project / "models" / "m.sql").write_text("select 1 as x\n")
    run = run_tool(
        "dbt_transform", {"command": "run"}, inputs={"project": project}, output=f"dbt-{name}"
    )
    assert run.cli.returncode == 0, run.explain()
    assert run.result["counts"] == {"success": 1}
    assert f"model.{name}.m" in {n["unique_id"] for n in run.result["nodes"]}


def _project_with_package(root: Path, name: str, install_path: str) -> Path:
    """A project whose packages.yml lists `helpers`, used by its only model."""
    project = root / name
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text(
        f'name: {name}\nversion: "1.0"\nprofile: {name}\npackages-install-path: "{install_path}"\n'
    )
    (project / "packages.yml").write_text(
        "packages:\n  - package: acme/helpers\n    version: 0.1.0\n"
    )
    (project / "models" / "m.sql").write_text("select {{ helpers.answer() }} as x\n")
    return project


def test_a_project_with_uninstalled_packages_fails_saying_how_to_vendor_them(
    run_tool: RunTool, tools_root: Path
) -> None:
    # dbt's own advice was 'Run "dbt deps"', a command dbt_transform does not offer.
    install_path = "{{ env_var('DBT_PACKAGES_INSTALL_PATH', 'dbt_packages') }}"
    project = _project_with_package(tools_root, "needs_deps", install_path)
    run = run_tool(
        "dbt_transform", {"command": "run"}, inputs={"project": project}, output="dbt-deps"
    )
    error = assert_tool_error(run)
    assert "UninstalledPackagesFoundError" in error["message"]
    assert "cannot run `dbt deps`" in error["message"]
    assert "packages-install-path: dbt_packages" in error["message"]


def test_a_project_with_vendored_packages_runs(run_tool: RunTool, tools_root: Path) -> None:
    project = _project_with_package(tools_root, "vendored", "dbt_packages")
    package = project / "dbt_packages" / "helpers"
    (package / "macros").mkdir(parents=True)
    (package / "dbt_project.yml").write_text('name: helpers\nversion: "0.1.0"\n')
    (package / "macros" / "answer.sql").write_text("{% macro answer() %}42{% endmacro %}\n")
    run = run_tool(
        "dbt_transform", {"command": "run"}, inputs={"project": project}, output="dbt-vendored"
    )
    assert run.cli.returncode == 0, run.explain()
    assert run.result["nodes"][0]["rows"] == 1


def test_external_materializations_are_written_to_the_output(
    run_tool: RunTool, tools_root: Path
) -> None:
    # dbt-duckdb writes an `external` model's file under external_root, the working directory
    # (/tmp) by default: the run succeeded and the Parquet file was lost with the container.
    project = tools_root / "external_project"
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text('name: ext\nversion: "1.0"\nprofile: ext\n')
    (project / "models" / "exported.sql").write_text(
        "{{ config(materialized='external', format='parquet') }}\nselect 1 as x\n"
    )
    run = run_tool(
        "dbt_transform", {"command": "run"}, inputs={"project": project}, output="dbt-external"
    )
    assert run.cli.returncode == 0, run.explain()
    assert "exported.parquet" in run.outputs, sorted(run.outputs)
    assert run.result["nodes"][0]["rows"] == 1


def test_paths_in_the_sql_are_relative_to_the_project(run_tool: RunTool, tools_root: Path) -> None:
    # dbt runs from the project root; here it ran from /tmp, so a model reading a file of the
    # project by a relative path failed with "No files found that match the pattern".
    project = tools_root / "relative_paths"
    (project / "models").mkdir(parents=True)
    (project / "data").mkdir()
    (project / "dbt_project.yml").write_text('name: rel\nversion: "1.0"\nprofile: rel\n')
    (project / "data" / "raw.csv").write_text("id,v\n1,a\n2,b\n")
    (project / "models" / "from_file.sql").write_text(
        "select * from read_csv_auto('data/raw.csv')\n"
    )
    run = run_tool(
        "dbt_transform", {"command": "run"}, inputs={"project": project}, output="dbt-relative"
    )
    assert run.cli.returncode == 0, run.explain()
    assert run.result["nodes"][0]["rows"] == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: bad\nprofile: [\n", "dbt_project.yml in the 'project' input is not valid YAML"),
        ("- name: bad\n", "dbt_project.yml in the 'project' input is not a mapping"),
    ],
)
def test_an_unreadable_dbt_project_yml_fails_naming_it(
    run_tool: RunTool, tools_root: Path, text: str, expected: str
) -> None:
    # The error was the YAML parser's alone ("ParserError: while parsing a flow node ..."), or
    # an AttributeError for a list, without the file's name.
    project = tools_root / f"bad_yaml_{len(text)}"
    project.mkdir()
    (project / "dbt_project.yml").write_text(text)
    run = run_tool("dbt_transform", {}, inputs={"project": project}, output=f"dbt-{project.name}")
    error = assert_tool_error(run)
    assert error["message"].startswith(expected)


@pytest.mark.parametrize(
    ("args", "alias"),
    [
        ({"database": "source_db.duckdb"}, "source_db"),
        ({"database": "raw.duckdb", "source_alias": "RAW"}, "RAW"),
    ],
)
def test_a_database_named_like_the_source_alias_fails_saying_so(
    run_tool: RunTool, tools_root: Path, args: dict[str, str], alias: str
) -> None:
    # DuckDB's words were all a user got: 'Database "raw" is already attached in READ_WRITE
    # mode, cannot re-attach in READ_ONLY mode'. The check runs before the file is opened.
    source = tools_root / f"alias_source_{alias}.duckdb"
    source.write_bytes(b"not opened")
    run = run_tool(
        "dbt_transform",
        {"command": "run", **args},
        inputs={"project": EXAMPLES / "dbt_project", "source_db": source},
        output=f"dbt-alias-{alias}",
    )
    error = assert_tool_error(run)
    assert error["message"].startswith(
        f"database {args['database']!r} and source_alias {alias!r} name the same DuckDB catalog"
    )
