"""eda_analyze: profile a CSV, Parquet or DuckDB table with fg-data-profiling (ydata-profiling).

Writes an HTML report (minimal mode: no correlations or interactions, which grow quadratically
with the columns) and, optionally, the full JSON description to the output directory, and returns
a compact summary: rows, columns, per-column type and missing values, and the alerts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sandbox_runtime import Context, ToolError, run

# Per column, in the JSON description: the most frequent values' counts (value_counts_without_nan
# is sorted by count; value_counts_index_sorted keeps the lowest values).
VALUE_COUNTS_KEPT = 100
_VALUE_COUNT_KEYS = ("value_counts_without_nan", "value_counts_index_sorted")

SUFFIXES = {
    "csv": (".csv", ".tsv", ".txt"),
    "parquet": (".parquet", ".pq"),
    "duckdb": (".duckdb", ".db"),
}
# A table name: `table` or `schema.table` (or `catalog.schema.table`), plain identifiers only: the
# name is interpolated into SQL, so the policy's pattern and this check both keep it to that.
TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,2}$")


def _data_file(ctx: Context, fmt: str) -> Path:
    mounted = ctx.inputs.get("data")
    if mounted is None:
        msg = "eda_analyze needs an input named 'data' (a file or a directory)"
        raise ToolError(msg)
    path = Path(mounted)
    if path.is_file():
        return path
    wanted = ctx.args.get("file")
    if wanted:
        candidate = path / wanted
        if not candidate.is_file():
            msg = f"file {wanted!r} not found in the 'data' input"
            raise ToolError(msg)
        return candidate
    found = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES[fmt] and p.is_file())
    if len(found) != 1:
        msg = f"the 'data' input holds {len(found)} {fmt} files; pass 'file' to choose one"
        raise ToolError(
            msg,
            {"found": [p.name for p in found][:50]},
        )
    return found[0]


def _read(path: Path, fmt: str, args: dict[str, Any], max_rows: int) -> Any:
    import pandas as pd

    if fmt == "csv":
        # Dates stay text unless named: pandas' guessing is slow and silently wrong on mixed data.
        parse_dates = list(args.get("parse_dates") or []) or False
        try:
            # A .tsv is chosen as a CSV file: read it as what its name says unless told otherwise.
            default_sep = "\t" if path.suffix.lower() == ".tsv" else ","
            frame = pd.read_csv(
                path, sep=str(args.get("sep", default_sep)), nrows=max_rows, parse_dates=parse_dates
            )
        except pd.errors.EmptyDataError as exc:
            msg = f"{path.name} is empty: no header line and no rows to profile"
            raise ToolError(msg) from exc
        except UnicodeDecodeError as exc:
            byte = exc.object[exc.start : exc.start + 1].hex()
            msg = (
                f"{path.name} is not UTF-8 text (byte 0x{byte}: {exc.reason}): save a CSV as "
                "UTF-8 (e.g. `iconv -f latin1 -t utf-8`), or pass 'format' for Parquet or DuckDB"
            )
            raise ToolError(msg, {"encoding": "utf-8"}) from exc
        _check_dates(frame, parse_dates or [], path.name)
        return frame
    if fmt == "parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        batches = []
        rows = 0
        for batch in parquet.iter_batches(batch_size=65536):
            batches.append(batch)
            rows += batch.num_rows
            if rows >= max_rows:
                break
        if not batches:
            return parquet.schema_arrow.empty_table().to_pandas()
        import pyarrow as pa

        return pa.Table.from_batches(batches).slice(0, max_rows).to_pandas()
    import duckdb

    table = args.get("table")
    if not table:
        msg = "format 'duckdb' needs 'table' (e.g. main.mart_users)"
        raise ToolError(msg)
    if not TABLE.match(table):
        msg = f"invalid table name {table!r}"
        raise ToolError(msg)
    quoted = ".".join(f'"{part}"' for part in table.split("."))
    # read_only: the input is mounted read-only and DuckDB must not try to write a WAL next to it.
    with duckdb.connect(str(path), read_only=True) as con:
        try:
            # `quoted` is built from identifiers checked against TABLE above; LIMIT is an int.
            sql = f"SELECT * FROM {quoted} LIMIT {int(max_rows)}"  # noqa: S608
            return con.execute(sql).df()
        except duckdb.CatalogException as exc:
            listed = con.execute(
                "SELECT table_catalog, table_schema, table_name, table_type "
                "FROM information_schema.tables ORDER BY 2, 3"
            ).fetchall()
            tables = [f"{schema}.{name}" for _, schema, name, _ in listed]
            # The table may exist and fail inside: a view over a database attached when it was
            # created (dbt's source_db) names a catalog this connection does not have.
            wanted = table.lower().split(".")
            kinds = [row[3] for row in listed if _matches(row[:3], wanted)]
            if kinds:
                what = "view" if "VIEW" in kinds[0].upper() else "table"
                msg = f"{what} {table!r} in {path.name} cannot be read: {exc}"
                if what == "view":
                    msg += (
                        " (a view reads other tables when queried; one over a database that is "
                        "not part of this file cannot be profiled: make it a table, e.g. dbt's "
                        "`materialized: table`)"
                    )
                raise ToolError(msg, {"tables": tables[:100]}) from exc
            msg = f"table {table!r} not found in {path.name}"
            current = con.execute("SELECT current_database()").fetchone()
            catalog = str(current[0]) if current else ""
            if len(wanted) == 3 and wanted[0] != catalog.lower():  # catalog.schema.table
                # DuckDB names the catalog after the file, here the mounted name; dbt's relation
                # names carry the name the file had when dbt wrote it.
                msg += (
                    f" (its catalog is {catalog!r} here, not {table.split('.')[0]!r}: name the "
                    "table as schema.table)"
                )
            raise ToolError(msg, {"tables": tables[:100]}) from exc


def _matches(row: tuple[str, ...], wanted: list[str]) -> bool:
    """Whether information_schema's `catalog.schema.name` is the (lower-cased) `[[catalog.]
    schema.]table` asked for; DuckDB resolves identifiers case-insensitively."""
    return [part.lower() for part in row][-len(wanted) :] == wanted


def _check_dates(frame: Any, columns: list[str], name: str) -> None:
    """Fail when a column named in parse_dates stayed text: pandas takes one format from a
    column's first value and, when any other value does not fit it, silently keeps the column
    as strings (profiled as Text, not DateTime)."""
    import pandas as pd

    unparsed = {
        column: [str(v) for v in frame[column].dropna().head(3)]
        for column in columns
        if not pd.api.types.is_datetime64_any_dtype(frame[column]) and frame[column].notna().any()
    }
    if unparsed:
        first = next(iter(unparsed))
        msg = (
            f"{name}: parse_dates column(s) {', '.join(map(repr, unparsed))} could not be parsed "
            f"as dates (e.g. {first!r} starts {', '.join(unparsed[first])}): every value of a "
            "column must be a date in the one format its first value has; write the dates in "
            "one format (ISO 8601, 2024-01-31, parses reliably) or leave the column out of "
            "parse_dates to profile it as text"
        )
        raise ToolError(msg, {"unparsed": unparsed})


def _unique_columns(frame: Any) -> Any:
    """Rename repeated column names the way pandas' CSV reader does (`a`, `a.1`, ...).

    Parquet (and Arrow) allow a name twice; the profiler would describe only one of them and
    `frame[name]` would be a frame, not a column.
    """
    names = [str(c) for c in frame.columns]
    if len(set(names)) == len(names):
        return frame
    taken = set(names)
    seen: set[str] = set()
    unique = []
    for name in names:
        new, n = name, 0
        while new in seen or (new != name and new in taken):
            n += 1
            new = f"{name}.{n}"
        seen.add(new)
        unique.append(new)
    frame.columns = unique
    return frame


def _summary(description: Any, frame: Any) -> dict[str, Any]:
    table = description.table
    columns = {}
    for name, var in description.variables.items():
        entry: dict[str, Any] = {
            "type": str(var.get("type")),
            "dtype": str(frame[name].dtype) if name in frame.columns else None,
            "n_missing": int(var.get("n_missing", 0)),
            "p_missing": float(var.get("p_missing", 0.0)),
            "n_distinct": var.get("n_distinct"),
        }
        for stat in ("mean", "std", "min", "max"):
            if stat in var:
                entry[stat] = var[stat]
        columns[str(name)] = entry
    alerts = [
        {"type": alert.alert_type_name, "column": alert.column_name, "message": str(alert)}
        for alert in description.alerts
    ]
    return {
        "rows": int(table.get("n", 0)),
        "columns": int(table.get("n_var", 0)),
        "types": {str(k): int(v) for k, v in dict(table.get("types", {})).items()},
        "missing_cells": int(table.get("n_cells_missing", 0)),
        "missing_cells_fraction": float(table.get("p_cells_missing", 0.0)),
        "duplicate_rows": table.get("n_duplicates"),
        "variables": columns,
        "alerts": alerts,
    }


def main(ctx: Context) -> dict[str, Any]:
    if ctx.output_dir is None:
        msg = "eda_analyze needs an output directory for its report"
        raise ToolError(msg)
    args = ctx.args
    fmt = str(args.get("format", "csv"))
    path = _data_file(ctx, fmt)
    max_rows = int(args.get("max_rows", 1_000_000))

    ctx.progress(f"reading {path.name} ({fmt})", 0.05)
    frame = _unique_columns(_read(path, fmt, args, max_rows))
    if frame.shape[1] == 0:
        msg = f"{path.name} has no columns"
        raise ToolError(msg)
    if frame.shape[0] == 0:
        what = f"table {args['table']!r}" if fmt == "duckdb" else path.name
        columns = [str(c) for c in frame.columns]
        msg = f"{what} has no rows to profile (only the columns: {', '.join(columns[:20])})"
        raise ToolError(msg, {"columns": columns[:100]})
    ctx.progress(f"read {len(frame)} rows x {frame.shape[1]} columns", 0.2)

    from data_profiling import ProfileReport  # heavy import (matplotlib, scipy), after the read

    title = str(args.get("title") or f"Profile of {args.get('table') or path.name}")
    report = ProfileReport(frame, title=title, minimal=True, progress_bar=False)
    ctx.progress("profiling", 0.3)
    description = report.get_description()
    ctx.progress("rendering report", 0.7)
    output_dir = Path(ctx.output_dir)
    html = output_dir / str(args.get("report", "profile.html"))
    report.to_file(html)
    written = [html.name]
    if args.get("write_json", True):
        json_path = html.with_suffix(".json")
        _trim_value_counts(description)
        report.to_file(json_path)
        written.append(json_path.name)
    ctx.progress("done", 1.0)
    return {
        "source": {
            "file": path.name,
            "format": fmt,
            "table": args.get("table"),
            "max_rows": max_rows,
        },
        "report": html.name,
        "files": written,
        "summary": _summary(description, frame),
    }


def _trim_value_counts(description: Any) -> None:
    """Keep the JSON description's value counts to each column's most frequent values.

    The profiler writes every distinct value's count into the JSON (the HTML shows the top
    few): for a column of a million distinct values that is a million entries, and rendering
    them took a 1.5-million-row CSV past 1.5 GB and the policy's memory limit. ``n_distinct``
    still counts them all. Done after the HTML, which is rendered from the same description."""
    for variable in description.variables.values():
        for key in _VALUE_COUNT_KEYS:
            counts = variable.get(key)
            if counts is not None and len(counts) > VALUE_COUNTS_KEPT:
                variable[key] = counts.head(VALUE_COUNTS_KEPT)


if __name__ == "__main__":
    run(main)
