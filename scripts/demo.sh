#!/usr/bin/env bash
# The four-tool pipeline as a user runs it, each step in its own container with no network:
#   PyAirbyte (source-faker) -> DuckDB  ->  dbt build  ->  Dagster materialization  ->  EDA report
# Frames are printed as they stream (long lines shortened for the terminal); the full streams
# are kept as NDJSON next to each step's outputs.
set -euo pipefail
cd "$(dirname "$0")/.."
sandbox=(.venv/bin/python -m sandbox --policies policies)
run_dir="demo-output/run-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$run_dir"

step() {
  local name=$1
  shift
  printf '\n\033[1m== %s\033[0m  sandbox run %s\n' "$name" "$*"
  local status=0
  "${sandbox[@]}" run "$@" | tee "$run_dir/$name.frames.ndjson" |
    cut -c1-220 || status=$?
  status=${PIPESTATUS[0]}
  if [ "$status" -ne 0 ]; then
    echo "demo: step $name failed with exit code $status (frames: $run_dir/$name.frames.ndjson)" >&2
    exit "$status"
  fi
}

step ingest pyairbyte_ingest \
  --args '{"config": {"count": 200, "seed": 42}, "streams": ["users", "products", "purchases"]}' \
  --output "$run_dir/ingest"

step transform dbt_transform --args '{"command": "build"}' \
  --input project=examples/dbt_project --input "source_db=$run_dir/ingest" \
  --output "$run_dir/dbt"

step orchestrate dagster_orchestrate --args '{}' \
  --input definitions=examples/dagster --input "warehouse=$run_dir/dbt/dbt.duckdb" \
  --output "$run_dir/dagster"

step analyze eda_analyze --args '{"format": "duckdb", "table": "marts.mart_user_purchases"}' \
  --input "data=$run_dir/dbt/dbt.duckdb" --output "$run_dir/eda"

printf '\n\033[1mDone.\033[0m Every step ran in its own container with no network.\n'
printf '  ingested data:   %s\n' "$run_dir/ingest/ingest.duckdb"
printf '  dbt warehouse:   %s\n' "$run_dir/dbt/dbt.duckdb"
printf '  dagster outputs: %s\n' "$run_dir/dagster"
printf '  EDA report:      %s\n' "$(ls "$run_dir"/eda/*.html)"
printf '  frame streams:   %s/*.frames.ndjson\n' "$run_dir"
