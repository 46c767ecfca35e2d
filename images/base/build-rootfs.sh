#!/usr/bin/env bash
# Build the registry-free root image `sandbox/debian-rootfs:bookworm` from Debian's packages:
# debootstrap (minbase + python3 + python3-venv + ca-certificates), then `docker import`.
# Does nothing when the image already exists (delete it to rebuild).
set -euo pipefail

tag=${ROOTFS_IMAGE:-sandbox/debian-rootfs:bookworm}
suite=${DEBIAN_SUITE:-bookworm}

if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "rootfs: $tag present" >&2
  exit 0
fi

# Use the mirror apt is already configured with on this host (deb822 or one-line sources).
mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
fi
if [ -z "$mirror" ]; then
  mirror=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
if [ -z "$mirror" ]; then
  echo "rootfs: no Debian mirror found in /etc/apt; set DEBIAN_MIRROR" >&2
  exit 1
fi
command -v debootstrap >/dev/null || { echo "rootfs: debootstrap missing (apt-get install debootstrap)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "rootfs: debootstrap $suite from $mirror" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$suite" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2
  exit 1
}
# Nothing from the build host or apt's caches belongs in the image.
rm -rf "$work/rootfs/var/cache/apt/"*.bin "$work/rootfs/var/cache/apt/archives/"*.deb \
  "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/log/"* "$work/rootfs/tmp/"*
tar -C "$work/rootfs" --numeric-owner -c . |
  docker import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$tag" >/dev/null
echo "rootfs: imported $tag" >&2
