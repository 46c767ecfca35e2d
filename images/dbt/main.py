"""dbt_transform: run dbt (core + duckdb adapter) on a project mounted read-only.

The project is used in place (``/inputs/project``, read-only); everything dbt writes goes elsewhere:
target and log paths to /tmp (the artifacts worth keeping are copied to ``/output/artifacts``),
the profile is generated in /tmp, and the DuckDB database dbt builds is ``/output/<database>``.
A DuckDB file from an earlier step (input ``source_db``) is attached read-only under an alias the
project's sources refer to; the database of an earlier dbt run (input ``base_db``) can be copied in
as the starting point. dbt runs in-process through ``dbtRunner``: nothing is exec'd from the
noexec /tmp.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from sandbox_runtime import Context, ToolError, run

WORK = Path("/tmp/dbt")
TARGET = WORK / "target"
LOGS = WORK / "logs"
PROFILES = WORK / "profiles"

# Subcommand words per `command` arg; the arg's enum in the policy is the whitelist.
COMMANDS: dict[str, list[str]] = {
    "build": ["build"],
    "run": ["run"],
    "test": ["test"],
    "seed": ["seed"],
    "compile": ["compile"],
    "docs generate": ["docs", "generate"],
}
# Flags each subcommand accepts (dbt rejects e.g. --full-refresh on `test`).
ACCEPTS_FULL_REFRESH = {"build", "run", "seed"}
ARTIFACTS = ("run_results.json", "manifest.json", "catalog.json", "index.html", "sources.json")
FAILED = {"error", "fail", "runtime error"}
# The result (or error) travels as one frame; a big project's per-node list would overflow it and
# fail a run dbt completed. Nodes beyond this share of the frame limit are left to
# artifacts/run_results.json, which has them all.
NODES_BUDGET = int(os.environ.get("SANDBOX_MAX_FRAME_BYTES", 1024 * 1024)) // 2


def _project_name_and_profile(project: Path) -> tuple[str, str]:
    import yaml  # dbt's own dependency; imported late to keep `--help`-style failures cheap

    config_file = project / "dbt_project.yml"
    if not config_file.is_file():
        msg = f"no dbt_project.yml in the 'project' input ({project})"
        raise ToolError(msg)
    try:
        config = yaml.safe_load(config_file.read_text()) or {}
    except yaml.YAMLError as exc:
        msg = f"dbt_project.yml in the 'project' input is not valid YAML: {exc}"
        raise ToolError(msg) from exc
    if not isinstance(config, dict):
        msg = "dbt_project.yml in the 'project' input is not a mapping of settings (name: ...)"
        raise ToolError(msg)
    name = str(config.get("name") or "project")
    return name, str(config.get("profile") or name)


def _duckdb_input(ctx: Context, name: str, file_arg: str) -> Path | None:
    """A DuckDB file input: the input itself, or the file `file_arg` names (default: the only
    *.duckdb) in an input directory."""
    mounted = ctx.inputs.get(name)
    if mounted is None:
        return None
    path = Path(mounted)
    if path.is_file():
        return path
    wanted = ctx.args.get(file_arg)
    if wanted:
        candidate = path / wanted
        if not candidate.is_file():
            msg = f"{file_arg} {wanted!r} not found in the {name!r} input"
            raise ToolError(msg)
        return candidate
    found = sorted(path.glob("*.duckdb"))
    if len(found) != 1:
        msg = (
            f"the {name!r} input must be a DuckDB file or a directory with exactly one *.duckdb "
            f"file (found {len(found)}); pass {file_arg} to choose"
        )
        raise ToolError(msg)
    return found[0]


def _memory_limit_mb() -> int | None:
    """The container's memory limit (cgroup v2 or v1), in MiB; None when unlimited/unknown."""
    for name in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(name).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 50:  # v1 reports "no limit" as a huge number
            return int(text) // (1024 * 1024)
    return None


def _write_profile(
    profile: str, database: Path, source_db: Path | None, alias: str, threads: int
) -> None:
    import yaml

    output: dict[str, Any] = {"type": "duckdb", "path": str(database), "threads": threads}
    # dbt-duckdb's `external` materialization writes its files under external_root, by default
    # the working directory (/tmp here), where they were lost with the container.
    output["external_root"] = str(database.parent)
    # DuckDB sizes its buffer pool from the host's RAM, not the container's limit: cap it at half
    # the limit (dbt, Python and the tmpfs share the rest) and let it spill to /tmp instead of
    # being OOM-killed.
    limit = _memory_limit_mb()
    settings: dict[str, Any] = {"temp_directory": str(WORK / "duckdb_tmp")}
    if limit is not None:
        settings["memory_limit"] = f"{max(limit // 2, 64)}MB"
    output["settings"] = settings
    if source_db is not None:
        output["attach"] = [{"path": str(source_db), "alias": alias, "read_only": True}]
    PROFILES.mkdir(parents=True, exist_ok=True)
    profiles = {profile: {"target": "sandbox", "outputs": {"sandbox": output}}}
    (PROFILES / "profiles.yml").write_text(yaml.safe_dump(profiles, sort_keys=False))


def _dbt_args(ctx: Context, project: Path, profile: str) -> list[str]:
    args = ctx.args
    command = str(args.get("command", "build"))
    words = list(COMMANDS[command])
    words += [
        "--project-dir", str(project),
        "--profiles-dir", str(PROFILES),
        # The profile written above, by name: dbt otherwise insists on a `profile:` key in
        # dbt_project.yml and renders it (an env_var() there named a profile that did not exist).
        "--profile", profile,
        "--target", "sandbox",
        "--target-path", str(TARGET),
        "--log-path", str(LOGS),
        "--no-use-colors",
    ]  # fmt: skip
    for flag in ("select", "exclude"):
        values = args.get(flag) or []
        if values:
            words += [f"--{flag}", *values]
    if args.get("vars"):
        words += ["--vars", json.dumps(args["vars"])]
    if args.get("full_refresh") and command in ACCEPTS_FULL_REFRESH:
        words.append("--full-refresh")
    if args.get("fail_fast"):
        words.append("--fail-fast")
    return words


class _Progress:
    """Turns dbt's structured events into progress frames: one per finished node."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.total = 0
        self.done = 0

    def __call__(self, event: Any) -> None:
        name = event.info.name
        if name == "ConcurrencyLine":
            self.total = int(getattr(event.data, "node_count", 0) or 0)
            self.ctx.progress(f"running {self.total} nodes", 0.1)
        elif name == "NodeFinished":
            self.done += 1
            info = event.data.node_info
            fraction = round(0.1 + 0.85 * self.done / self.total, 3) if self.total else None
            self.ctx.progress(f"{info.unique_id}: {info.node_status}", fraction)


def _nodes(run_results: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = []
    for item in run_results.get("results", []):
        response = item.get("adapter_response") or {}
        nodes.append(
            {
                "unique_id": item.get("unique_id"),
                "status": item.get("status"),
                "execution_time_s": round(float(item.get("execution_time") or 0.0), 3),
                "timing": item.get("timing", []),
                "rows_affected": response.get("rows_affected"),
                "failures": item.get("failures"),
                "message": item.get("message"),
                "relation_name": item.get("relation_name"),
                "rows": None,  # filled for built models and seeds by _count_rows
            }
        )
    return nodes


def _seed_relations(nodes: list[dict[str, Any]]) -> None:
    """Seeds' relation names from the manifest: run_results.json leaves them null, so their
    rows were never counted."""
    seeds = [n for n in nodes if str(n["unique_id"]).startswith("seed.") and not n["relation_name"]]
    manifest_file = TARGET / "manifest.json"
    if not seeds or not manifest_file.is_file():
        return
    manifest = json.loads(manifest_file.read_text()).get("nodes", {})
    for node in seeds:
        node["relation_name"] = manifest.get(node["unique_id"], {}).get("relation_name")


def _fit(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The leading nodes whose JSON fits in NODES_BUDGET bytes."""
    size = 0
    for index, node in enumerate(nodes):
        size += len(json.dumps(node, ensure_ascii=False, default=str).encode()) + 1
        if size > NODES_BUDGET:
            return nodes[:index]
    return nodes


def _count_rows(database: Path, nodes: list[dict[str, Any]]) -> None:
    """Fill `rows` for built models and seeds: dbt-duckdb reports no rows_affected for tables."""
    built = [
        n for n in nodes if n["relation_name"] and n["unique_id"].split(".")[0] in ("model", "seed")
    ]
    if not built or not database.exists():
        return
    import duckdb

    try:
        # Same process as dbt: DuckDB's instance cache hands back the database dbt opened.
        with duckdb.connect(str(database)) as con:
            for node in built:
                if node["status"] == "success":
                    # relation_name is dbt's own quoted identifier from run_results.json.
                    sql = f"select count(*) from {node['relation_name']}"  # noqa: S608
                    row = con.execute(sql).fetchone()
                    node["rows"] = int(row[0]) if row else None
    except duckdb.Error as exc:  # counting is a courtesy; never fail a successful run on it
        print(f"row counts unavailable: {exc}")


def _copy_artifacts(output_dir: Path) -> list[str]:
    dest = output_dir / "artifacts"
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in ARTIFACTS:
        if (TARGET / name).is_file():
            shutil.copyfile(TARGET / name, dest / name)
            copied.append(f"artifacts/{name}")
    if (LOGS / "dbt.log").is_file():
        shutil.copyfile(LOGS / "dbt.log", dest / "dbt.log")
        copied.append("artifacts/dbt.log")
    return copied


NO_DEPS = (
    "\ndbt_transform cannot run `dbt deps` (no network): vendor the packages instead. Run "
    "`dbt deps` outside the sandbox, keep the installed packages inside the project (e.g. its "
    "dbt_packages/ directory) and point `packages-install-path` in dbt_project.yml at them "
    "(`packages-install-path: dbt_packages`)"
)

# DuckDB names a database file's catalog after its stem, and renames these (system_db...): dbt
# then addresses DuckDB's own catalog and fails with its words ("Cannot create schema in system
# catalog").
RESERVED_CATALOGS = frozenset({"system", "temp"})


def _check_database_name(database: Path) -> None:
    if database.stem.lower() in RESERVED_CATALOGS:
        msg = (
            f"database {database.name!r}: DuckDB reserves the catalog name {database.stem!r}; "
            "choose another file name, e.g. 'dbt.duckdb'"
        )
        raise ToolError(msg, {"database": database.name})


def main(ctx: Context) -> dict[str, Any]:
    if "project" not in ctx.inputs:
        msg = "dbt_transform needs an input named 'project' (the dbt project directory)"
        raise ToolError(msg)
    if ctx.output_dir is None:
        msg = "dbt_transform needs an output directory for its database and artifacts"
        raise ToolError(msg)
    project = Path(ctx.inputs["project"])
    output_dir = Path(ctx.output_dir)
    database = output_dir / str(ctx.args.get("database", "dbt.duckdb"))
    _check_database_name(database)
    command = str(ctx.args.get("command", "build"))

    ctx.progress("preparing profile", 0.02)
    name, profile = _project_name_and_profile(project)
    source_db = _duckdb_input(ctx, "source_db", "source_db_file")
    alias = str(ctx.args.get("source_alias", "source_db"))
    if source_db is not None and alias.lower() == database.stem.lower():
        # DuckDB's words: 'Database "x" is already attached in READ_WRITE mode'.
        msg = (
            f"database {database.name!r} and source_alias {alias!r} name the same DuckDB catalog "
            "(a database file's catalog is its name without .duckdb); choose another database "
            "file name or source_alias"
        )
        raise ToolError(msg, {"database": database.name, "source_alias": alias})
    # Each run writes a fresh database; `base_db` (the database of an earlier dbt run) is copied
    # in first so `test`, incremental models or a partial `run` can continue from it.
    base_db = _duckdb_input(ctx, "base_db", "base_db_file")
    if base_db is not None:
        ctx.progress(f"copying {base_db.name} to start from", 0.03)
        shutil.copyfile(base_db, database)
    _write_profile(profile, database, source_db, alias, int(ctx.args.get("threads", 1)))
    # Projects may read this in dbt_project.yml (packages-install-path) so `dbt deps` output and
    # installed packages never land in the read-only project.
    os.environ.setdefault("DBT_PACKAGES_INSTALL_PATH", str(WORK / "dbt_packages"))

    from dbt.cli.main import dbtRunner  # heavy import, after the cheap checks
    from dbt.exceptions import UninstalledPackagesFoundError

    words = _dbt_args(ctx, project, profile)
    # Where dbt is run from: paths in a project's SQL (read_csv('data/raw.csv'), a source's
    # external_location) are relative to it, and dbt expects the project root.
    os.chdir(project)
    ctx.progress(f"dbt {' '.join(COMMANDS[command])} ({name})", 0.05)
    outcome = dbtRunner(callbacks=[_Progress(ctx)]).invoke(words)

    copied = _copy_artifacts(output_dir)
    results_file = TARGET / "run_results.json"
    run_results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    nodes = _nodes(run_results)
    _seed_relations(nodes)
    # Failed models/seeds first: a broken model also errors the tests that touch it.
    failed = sorted(
        (n for n in nodes if n["status"] in FAILED),
        key=lambda n: str(n["unique_id"]).startswith("test."),
    )
    _count_rows(database, nodes)
    shown = _fit(nodes)
    listed = {"nodes": shown, "nodes_omitted": len(nodes) - len(shown), "artifacts": copied}

    if outcome.exception is not None:
        msg = f"dbt {command} failed: {type(outcome.exception).__name__}: {outcome.exception}"
        if isinstance(outcome.exception, UninstalledPackagesFoundError):
            # dbt's own advice ("Run dbt deps") is no command here, and deps needs a network.
            msg += NO_DEPS
        raise ToolError(msg, listed) from outcome.exception
    if failed or not outcome.success:
        summary = "; ".join(
            f"{n['unique_id']} ({n['status']}): {n['message']}" for n in failed[:10]
        )
        if len(failed) > 10:
            summary += f"; and {len(failed) - 10} more (details.failed)"
        msg = f"dbt {command} failed: {summary or 'see artifacts/dbt.log'}"
        raise ToolError(msg, {"failed": [n["unique_id"] for n in failed], **listed})

    ctx.progress("done", 1.0)
    counts: dict[str, int] = {}
    for node in nodes:
        counts[str(node["status"])] = counts.get(str(node["status"]), 0) + 1
    return {
        "command": command,
        "project": name,
        "success": True,
        "database": database.name if database.exists() else None,
        "elapsed_s": run_results.get("elapsed_time"),
        "counts": counts,
        **listed,
    }


if __name__ == "__main__":
    run(main)
