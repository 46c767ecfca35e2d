"""dagster_orchestrate: materialize assets (or run a job) from a definitions file, in-process.

The definitions file comes from a read-only input (``definitions``: the file itself or a directory
holding ``definitions_file``). It runs against ``DagsterInstance.ephemeral()`` (in-memory run and
event storage, artifacts under /tmp), so nothing persists between runs and no daemon or webserver
is involved. Definitions reach their data through environment variables the script sets before
loading them: ``SANDBOX_OUTPUT_DIR`` and ``SANDBOX_INPUT_<NAME>`` for every input.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from sandbox_runtime import Context, ToolError, run

STORAGE = Path("/tmp/dagster/storage")
EPHEMERAL_JOB = "__ephemeral_asset_job__"  # dg.materialize's name for its job
PACKAGE = "sandbox_definitions_package"  # a definitions directory with __init__.py, imported


def _definitions_path(ctx: Context) -> Path:
    mounted = ctx.inputs.get("definitions")
    if mounted is None:
        msg = "dagster_orchestrate needs an input named 'definitions'"
        raise ToolError(msg)
    path = Path(mounted)
    if path.is_dir():
        path = path / str(ctx.args.get("definitions_file", "definitions.py"))
    if not path.is_file():
        msg = f"definitions file not found: {path}"
        raise ToolError(msg)
    return path


def _load_definitions(path: Path) -> Any:
    import dagster as dg

    # The file's directory goes on sys.path so a definitions package can import its siblings.
    sys.path.insert(0, str(path.parent))
    name = "sandbox_definitions"
    if (path.parent / "__init__.py").is_file():
        # A package (as Dagster scaffolds it): the file is loaded as its module, so relative
        # imports (`from .assets import ...`) resolve ("attempted relative import with no known
        # parent package" otherwise).
        package = importlib.util.spec_from_file_location(
            PACKAGE, path.parent / "__init__.py", submodule_search_locations=[str(path.parent)]
        )
        if package is None or package.loader is None:
            msg = f"cannot load {path.parent} as a Python package"
            raise ToolError(msg)
        sys.modules[PACKAGE] = importlib.util.module_from_spec(package)
        package.loader.exec_module(sys.modules[PACKAGE])
        name = f"{PACKAGE}.{path.stem}"
    # An explicit source loader: a file input is mounted as /inputs/definitions, without the
    # .py suffix importlib picks a loader by.
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    if spec is None or spec.loader is None:
        msg = f"cannot load {path} as a Python module"
        raise ToolError(msg)
    module = sys.modules.get(name)  # already imported by the package's __init__.py
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    # A `@dg.definitions` function (what `create-dagster` scaffolds) is a LazyDefinitions: called
    # without a context, as Dagster's own file loader does.
    from dagster.components.definitions import LazyDefinitions

    found = [v for v in vars(module).values() if isinstance(v, (dg.Definitions, LazyDefinitions))]
    if len(found) != 1:
        msg = (
            f"{path.name} must define exactly one dagster.Definitions or @dagster.definitions "
            f"function (found {len(found)})"
        )
        raise ToolError(msg)
    defs = found[0]() if isinstance(found[0], LazyDefinitions) else found[0]
    if not isinstance(defs, dg.Definitions):
        msg = f"the @dagster.definitions function in {path.name} must return a dagster.Definitions"
        raise ToolError(msg)
    return defs


def _metadata(entries: dict[str, Any]) -> dict[str, Any]:
    """MetadataValue objects → plain values (the runtime tags what JSON cannot hold)."""
    return {key: _plain(getattr(value, "value", value)) for key, value in entries.items()}


def _plain(value: Any, depth: int = 0) -> Any:
    """Records → dicts, all the way down. Table and schema metadata are Dagster records
    (TableSchema holds TableColumn records, a table TableRecords): tuples that refuse iteration,
    so a successful run with such metadata failed ("Iteration is not allowed on `@record`
    TableSchema")."""
    from dagster_shared.record import as_dict, is_record  # dagster's own dependency

    if depth > 32:  # deeper than any metadata value: the runtime stringifies it
        return str(value)
    if is_record(value):  # their _asdict() iterates, which records refuse
        return {str(k): _plain(v, depth + 1) for k, v in as_dict(value).items()}
    if hasattr(value, "_asdict"):  # a plain NamedTuple
        return {str(k): _plain(v, depth + 1) for k, v in value._asdict().items()}
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    return value


class _Progress:
    """Progress frames from the instance's event stream: one per finished step."""

    def __init__(self, ctx: Context, total: int) -> None:
        self.ctx = ctx
        self.total = max(total, 1)
        self.finished = 0

    def __call__(self, entry: Any) -> None:
        event = entry.dagster_event
        if event is None:
            return
        kind = event.event_type_value
        if kind == "STEP_START":
            self.ctx.progress(f"step {event.step_key} started", self._fraction())
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE", "STEP_SKIPPED"):
            self.finished += 1
            state = kind.removeprefix("STEP_").lower()
            self.ctx.progress(f"step {event.step_key} {state}", self._fraction())
        elif kind == "ASSET_MATERIALIZATION":
            self.ctx.progress(f"materialized {event.asset_key.to_user_string()}", self._fraction())

    def _fraction(self) -> float:
        return round(0.1 + 0.85 * min(self.finished / self.total, 1.0), 3)


def _watch(instance: Any, callback: _Progress) -> None:
    """Observe every event the run stores: wraps the instance's event handler."""
    original = instance.handle_new_event

    def handle(event: Any, *args: Any, **kwargs: Any) -> None:
        original(event, *args, **kwargs)
        try:
            callback(event)
        except Exception as exc:  # noqa: BLE001 - progress must never fail the run
            print(f"progress callback failed: {exc}", file=sys.stderr)

    instance.handle_new_event = handle


def _step_error(event: Any) -> dict[str, Any]:
    error = event.step_failure_data.error
    causes = []
    cause = error.cause if error is not None else None
    while cause is not None:
        causes.append(cause.message.strip())  # already "ValueError: ..."
        cause = cause.cause
    # Dagster wraps user code errors ("Error occurred while executing op ..."): the innermost
    # cause is the asset's own exception, the message a caller needs.
    message = causes[-1] if causes else (error.message.strip() if error else "unknown error")
    return {
        "step": event.step_key,
        "error_class": error.cls_name if error else None,
        "message": message,
        "causes": causes,
        "stack": "".join(error.stack) if error else "",
    }


def _partition_key(job: Any, partition: str | None, what_is: str, instance: Any) -> str | None:
    """The run's partition key: required for a partitioned job or asset selection (the step
    failed only when it read context.partition_key: "Cannot access partition_key for a
    non-partitioned run"), refused for an unpartitioned one."""
    partitions = job.partitions_def
    if partitions is None:
        if partition is not None:
            msg = f"'partition' {partition!r} given, but {what_is} not partitioned"
            raise ToolError(msg)
        return None
    if partition is None:
        try:
            keys = list(partitions.get_partition_keys(dynamic_partitions_store=instance))
        except Exception:  # noqa: BLE001 - the sample keys only illustrate the message
            keys = []
        sample = f", e.g. {', '.join(map(repr, keys[:3]))} ({len(keys)} keys)" if keys else ""
        msg = f"{what_is} partitioned ({partitions}): pass 'partition' with one key{sample}"
        raise ToolError(msg, {"partition_keys": keys[:100]})
    return partition


def _tmp_full() -> str:
    """The fix for a full disk: Dagster's default IO manager pickles every asset output under
    /tmp, a small tmpfs here, and the step failed with a bare 'No space left on device'."""
    stat = os.statvfs(STORAGE)
    size = stat.f_blocks * stat.f_frsize // (1024 * 1024)
    return (
        f" (/tmp, where Dagster's default IO manager stores every asset output, is a {size} MiB "
        "tmpfs: pass large data between assets through files under SANDBOX_OUTPUT_DIR, e.g. "
        "with an IO manager of your own, or return less)"
    )


def main(ctx: Context) -> dict[str, Any]:
    import dagster as dg

    definitions_file = _definitions_path(ctx)
    # Definitions find their data through these (set before the module is imported).
    for name, mounted in ctx.inputs.items():
        os.environ[f"SANDBOX_INPUT_{name.upper()}"] = mounted
    if ctx.output_dir is not None:
        os.environ["SANDBOX_OUTPUT_DIR"] = ctx.output_dir

    ctx.progress(f"loading {definitions_file.name}", 0.02)
    try:
        defs = _load_definitions(definitions_file)
    except ToolError:
        raise
    except Exception as exc:
        msg = f"loading {definitions_file.name} failed: {type(exc).__name__}: {exc}"
        raise ToolError(msg) from exc

    STORAGE.mkdir(parents=True, exist_ok=True)
    instance = dg.DagsterInstance.ephemeral(tempdir=str(STORAGE))
    run_config = ctx.args.get("run_config") or None
    job_name = ctx.args.get("job")
    selection = ctx.args.get("select") or None
    partition = ctx.args.get("partition")

    if job_name:
        try:
            job = defs.resolve_job_def(job_name)
        except Exception as exc:
            msg = f"no job named {job_name!r} in {definitions_file.name}"
            raise ToolError(msg) from exc
        total = len(job.graph.node_dict)
        _watch(instance, _Progress(ctx, total))
        ctx.progress(f"running job {job_name}", 0.1)
        result = job.execute_in_process(
            run_config=run_config,
            instance=instance,
            raise_on_error=False,
            partition_key=_partition_key(job, partition, f"job {job_name!r} is", instance),
        )
    else:
        assets = list(defs.assets or [])
        if not assets:
            msg = f"{definitions_file.name} defines no assets; pass 'job' to run a job"
            raise ToolError(msg)
        resources = dict(defs.resources or {})
        # Rough step count for the progress fraction (multi-assets count once).
        total = len(selection) if selection else len(assets)
        _watch(instance, _Progress(ctx, total))
        ctx.progress(f"materializing {', '.join(selection) if selection else 'all assets'}", 0.1)
        try:
            # What dg.materialize does, plus the definitions' asset checks (materialize takes
            # assets only, so @asset_check functions never ran and a blocking one never blocked).
            ephemeral = dg.Definitions(
                assets=assets,
                asset_checks=list(defs.asset_checks or []),
                resources=resources,
                jobs=[dg.define_asset_job(EPHEMERAL_JOB, selection=selection)],
            )
            ephemeral.resolve_all_job_defs()
            job = ephemeral.resolve_job_def(EPHEMERAL_JOB)
        except (dg.DagsterInvalidSubsetError, dg.DagsterInvalidDefinitionError) as exc:
            # An unknown key surfaces as a job that cannot be resolved; the cause says which.
            reason = f"{exc} ({exc.__cause__})" if exc.__cause__ else str(exc)
            msg = f"invalid asset selection {selection}: {reason}"
            raise ToolError(msg) from exc
        result = job.execute_in_process(
            run_config=run_config,
            instance=instance,
            raise_on_error=False,
            tags={"sandbox/run_id": ctx.run_id} if ctx.run_id else None,
            partition_key=_partition_key(job, partition, "the selected assets are", instance),
        )

    # Per-asset outcome from the run's events.
    assets_out: dict[str, dict[str, Any]] = {}
    for event in result.get_asset_materialization_events():
        key = event.asset_key.to_user_string()
        materialization = event.step_materialization_data.materialization
        assets_out[key] = {
            "status": "materialized",
            "step": event.step_key,
            "metadata": _metadata(dict(materialization.metadata)),
        }
    steps: dict[str, str] = {}
    failures = []
    for event in result.all_events:
        if event.event_type_value == "STEP_SUCCESS":
            steps[str(event.step_key)] = "success"
        elif event.event_type_value == "STEP_SKIPPED":
            steps[str(event.step_key)] = "skipped"
        elif event.event_type_value == "STEP_FAILURE":
            steps[str(event.step_key)] = "failed"
            failures.append(_step_error(event))

    # Every planned asset gets a status: materialized, failed (its step failed) or not_run (an
    # upstream step failed). A plain asset's step key is its key path joined with "__".
    planned = instance.all_logs(
        result.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED
    )
    for entry in planned:
        key = entry.dagster_event.asset_key
        name = key.to_user_string()
        if name not in assets_out:
            state = steps.get("__".join(key.path), "not_run")
            assets_out[name] = {
                "status": "failed" if state == "failed" else "not_run",
                "metadata": {},
            }

    checks = {
        f"{check.asset_key.to_user_string()}:{check.check_name}": {
            "passed": bool(check.passed),
            "severity": check.severity.value,
            "description": check.description,
            "metadata": _metadata(dict(check.metadata)),
        }
        for check in result.get_asset_check_evaluations()
    }

    if failures or not result.success:
        first = failures[0] if failures else {"step": None, "message": "run failed"}
        msg = f"step {first['step']} failed: {first['message']}"
        if "[Errno 28]" in str(first["message"]):  # ENOSPC: most likely the tmpfs
            msg += _tmp_full()
        raise ToolError(
            msg,
            {
                "run_id": result.run_id,
                "failures": failures,
                "steps": steps,
                "assets": assets_out,
                "checks": checks,
            },
        )
    ctx.progress("done", 1.0)
    return {
        "run_id": result.run_id,
        "job": job_name or result.job_def.name,
        "success": True,
        "steps": steps,
        "assets": assets_out,
        "checks": checks,
    }


if __name__ == "__main__":
    run(main)
