#!/usr/bin/env bash
# Build project images: a thin wrapper over `sandbox images build` (one build path, so the
# labels, and therefore the image ids, are the same whichever way an image is built).
#   bash scripts/build-image.sh NAME... [--no-cache] [-v]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${SANDBOX_PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || { echo "build-image: $python missing; run 'make venv' first" >&2; exit 2; }
cd "$root"
args=()
for arg in "$@"; do
  # -q (quiet) was this script's own flag; the default output is already one line per step.
  [ "$arg" = "-q" ] || args+=("$arg")
done
exec "$python" -m sandbox images build "${args[@]}"
