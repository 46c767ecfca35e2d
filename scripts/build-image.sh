#!/usr/bin/env bash
# Build one project image: images/NAME/Dockerfile -> sandbox/NAME:latest, context = repo root.
# The host CA bundle (PIP_CERT, SSL_CERT_FILE or REQUESTS_CA_BUNDLE) is copied to
# images/.build/ca-bundle.pem for Dockerfiles whose *build stage* needs PyPI; the final stages
# never copy it. Builds use host networking (the engine's default bridge is off).
set -euo pipefail
name=${1:?usage: build-image.sh NAME [docker build args...]}
shift
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ -f "images/$name/Dockerfile" ] || { echo "build-image: images/$name/Dockerfile not found" >&2; exit 2; }

if [ "$name" = base ]; then
  bash images/base/build-rootfs.sh
fi

mkdir -p images/.build
ca=""
for candidate in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" "${REQUESTS_CA_BUNDLE:-}"; do
  if [ -n "$candidate" ] && [ -f "$candidate" ]; then ca=$candidate; break; fi
done
if [ -n "$ca" ]; then cp "$ca" images/.build/ca-bundle.pem; else : >images/.build/ca-bundle.pem; fi

revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
echo "build-image: sandbox/$name" >&2
docker build --network host \
  --label "org.opencontainers.image.revision=$revision" \
  -f "images/$name/Dockerfile" -t "sandbox/$name:latest" "$@" .
