"""pyairbyte_ingest: read a preinstalled Airbyte connector into a DuckDB file with PyAirbyte.

The connector lives in its own venv (/opt/venvs/<source>) and runs as PyAirbyte's subprocess;
nothing is installed or looked up in a registry at run time (AIRBYTE_OFFLINE_MODE=1 in the policy,
``install_if_missing=False`` here). Records land in ``/output/<database>`` (DuckDB, one table per
stream plus PyAirbyte's ``_airbyte_*`` bookkeeping tables); staging files go to /tmp.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sandbox_runtime import Context, ToolError, run

# Connector name → its preinstalled executable. The policy's enum for `source` matches these keys.
CONNECTORS = {"source-faker": "/opt/venvs/source-faker/bin/source-faker"}
STAGING = Path("/tmp/airbyte/cache")


def _hook_progress(ctx: Context, expected: int) -> None:
    """Mirror PyAirbyte's progress tracker as progress frames.

    PyAirbyte has no callback API for progress; its tracker funnels every update through
    ``_update_display``, so that method is wrapped (throttled to about two frames a second, plus
    one frame per stream written). ``expected`` is the number of selected streams.
    """
    from airbyte import progress as ab_progress

    tracker_cls = ab_progress.ProgressTracker
    original = tracker_cls._update_display
    state = {"at": 0.0, "finalized": 0}
    total = max(expected, 1)

    def update(self: Any, *, force_refresh: bool = False) -> None:
        original(self, force_refresh=force_refresh)
        finalized = list(self.finalized_stream_names)
        now = time.monotonic()
        if len(finalized) > state["finalized"]:
            for name in finalized[int(state["finalized"]) :]:
                records = self.stream_read_counts.get(name, 0)
                fraction = 0.6 + 0.35 * min(len(finalized) / total, 1.0)
                ctx.progress(f"stream {name} written ({records} records)", round(fraction, 3))
            state.update(at=now, finalized=len(finalized))
            return
        if now - state["at"] < 0.5:
            return
        state["at"] = now
        if self.finalize_start_time is None:
            done = len(self.stream_read_end_times)
            counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.stream_read_counts.items()))
            fraction = 0.1 + 0.5 * min(done / total, 1.0)
            message = f"read {self.total_records_read} records ({counts or 'starting'})"
        else:
            fraction = 0.6
            message = f"writing {self.total_records_read} records to DuckDB"
        ctx.progress(message, round(fraction, 3))

    tracker_cls._update_display = update  # type: ignore[method-assign]


def main(ctx: Context) -> dict[str, Any]:
    if ctx.output_dir is None:
        msg = "pyairbyte_ingest needs an output directory for its DuckDB file"
        raise ToolError(msg)
    args = ctx.args
    source_name = str(args.get("source", "source-faker"))
    executable = CONNECTORS.get(source_name)
    if executable is None or not Path(executable).exists():
        msg = f"connector {source_name!r} is not installed in this image"
        raise ToolError(msg, {"installed": sorted(CONNECTORS)})
    database = Path(ctx.output_dir) / str(args.get("database", "ingest.duckdb"))
    if database.exists():
        msg = f"{database.name} already exists in the output directory"
        raise ToolError(msg)

    ctx.progress("loading PyAirbyte", 0.02)
    import airbyte as ab
    from airbyte.exceptions import PyAirbyteError

    try:
        source = ab.get_source(
            source_name,
            config=args.get("config") or {},
            local_executable=executable,
            install_if_missing=False,
        )
        ctx.progress(f"checking {source_name}", 0.05)
        source.check()
        available = source.get_available_streams()
        streams = list(args.get("streams") or available)
        unknown = sorted(set(streams) - set(available))
        if unknown:
            msg = f"unknown streams {unknown}"
            raise ToolError(msg, {"available": available})
        source.select_streams(streams)
        _hook_progress(ctx, len(streams))

        STAGING.mkdir(parents=True, exist_ok=True)
        cache = ab.DuckDBCache(db_path=database, schema_name="main", cache_dir=STAGING)
        ctx.progress(f"reading {', '.join(streams)}", 0.1)
        result = source.read(cache=cache, force_full_refresh=True)
    except PyAirbyteError as exc:
        # PyAirbyte's errors carry the connector's log excerpt and context as attributes.
        context = {k: str(v) for k, v in (getattr(exc, "context", None) or {}).items()}
        msg = f"{type(exc).__name__}: {exc.get_message() if hasattr(exc, 'get_message') else exc}"
        raise ToolError(
            msg,
            {"context": context, "log_text": str(getattr(exc, "log_text", "") or "")[-4000:]},
        ) from exc

    counts = {name: len(dataset) for name, dataset in result.streams.items()}
    # Release DuckDB so the file is complete (checkpointed, no .wal) when the container ends.
    cache.get_sql_engine().dispose()
    ctx.progress("done", 1.0)
    return {
        "source": source_name,
        "database": database.name,
        "schema": "main",
        "streams": counts,
        "total_records": sum(counts.values()),
        "bytes": database.stat().st_size if database.exists() else None,
    }


if __name__ == "__main__":
    run(main)
