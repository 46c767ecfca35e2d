#!/usr/bin/env bash
# Make sure a Docker engine answers. Does nothing when one already does; otherwise (root, Debian)
# installs Debian's docker.io and runsc, writes a daemon config registering gVisor, clears a stale
# pid file left by a killed dockerd, starts dockerd in the background and waits until it answers.
set -euo pipefail

log() { printf 'engine: %s\n' "$*" >&2; }

if docker info >/dev/null 2>&1; then
  log "a Docker engine already answers; nothing to do"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  log "no Docker engine answers and this is not root: start Docker yourself (e.g. 'sudo systemctl start docker')"
  exit 1
fi

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v runsc >/dev/null 2>&1 || need+=(runsc)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]} from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

mkdir -p /etc/docker
runsc_path=$(command -v runsc)
# The default bridge stays off: containers get no network unless a policy asks, and builds use
# host networking. gVisor gets --network=none and --oci-seccomp so the seccomp profile applies
# inside the sandbox too.
cat >/etc/docker/daemon.json <<JSON
{
  "bridge": "none",
  "iptables": false,
  "ip6tables": false,
  "runtimes": {
    "runsc": {
      "path": "${runsc_path}",
      "runtimeArgs": ["--network=none", "--oci-seccomp"]
    }
  }
}
JSON

pidfile=/var/run/docker.pid
if [ -f "$pidfile" ]; then
  pid=$(cat "$pidfile" 2>/dev/null || true)
  if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
    log "removing stale pid file $pidfile (process ${pid:-?} is gone)"
    rm -f "$pidfile"
  fi
fi
# containerd started by a killed dockerd leaves its own pid/socket; dockerd starts a fresh one.
rm -f /var/run/docker/containerd/containerd.pid 2>/dev/null || true

if ! pgrep -x dockerd >/dev/null 2>&1; then
  log "starting dockerd (log: /var/log/dockerd.log)"
  nohup dockerd >/var/log/dockerd.log 2>&1 </dev/null &
fi

for _ in $(seq 1 120); do
  if docker info >/dev/null 2>&1; then
    log "Docker engine answers: $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"
    exit 0
  fi
  sleep 0.5
done
log "dockerd did not answer within 60 s; see /var/log/dockerd.log"
tail -n 20 /var/log/dockerd.log >&2 || true
exit 1
