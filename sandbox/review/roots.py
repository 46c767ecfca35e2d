"""Are a policy's input roots safe to mount? Looks at the host filesystem (the one I/O rule).

A root must exist, must not be ``/``, must neither be nor lie under nor contain a system or
credential directory, and must not give access to a Docker (or any other) Unix socket: a
read-only bind mount does not stop ``connect()``, and the Docker socket is the host.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SYSTEM_DIRS: tuple[str, ...] = (
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/root",
    "/run",
    "/var/run",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/lib/kubelet",
    "/var/log",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
)
# Relative to the home directory.
CREDENTIAL_PATHS: tuple[str, ...] = (
    ".ssh",
    ".aws",
    ".azure",
    ".docker",
    ".kube",
    ".gnupg",
    ".config/gcloud",
    ".config/gh",
    ".password-store",
    ".netrc",
    ".git-credentials",
    ".pgpass",
    ".pypirc",
    ".npmrc",
    ".vault-token",
)
DOCKER_SOCKETS: tuple[str, ...] = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/run/podman/podman.sock",
)
SOCKET_NAMES = frozenset({"docker.sock", "containerd.sock", "podman.sock"})
# A bounded walk: data directories can be large, and check runs in CI on every push.
SCAN_LIMIT = 20_000


@dataclass(frozen=True)
class Host:
    """What the root rule compares against; tests build their own."""

    home: Path
    system_dirs: tuple[Path, ...] = tuple(Path(p) for p in SYSTEM_DIRS)
    sockets: tuple[Path, ...] = field(default_factory=tuple)
    scan_limit: int = SCAN_LIMIT

    @property
    def credentials(self) -> tuple[Path, ...]:
        return tuple(self.home / p for p in CREDENTIAL_PATHS)

    @classmethod
    def current(cls) -> Host:
        home = Path.home()
        sockets = [Path(p) for p in DOCKER_SOCKETS]
        sockets.append(home / ".docker/run/docker.sock")
        runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
        if runtime_dir:
            sockets.append(Path(runtime_dir) / "docker.sock")
        sockets.append(Path(f"/run/user/{os.getuid()}/docker.sock"))
        # Running as root, home is /root: it is then checked as a home (its credentials), not
        # refused whole, or every checkout under it would fail.
        system = tuple(p for p in map(Path, SYSTEM_DIRS) if not within(home, p))
        return cls(home=home, system_dirs=system, sockets=tuple(sockets))


def _variants(path: Path) -> set[Path]:
    """The path as written and resolved (``/var/run`` is a symlink to ``/run`` on most hosts)."""
    return {path, path.resolve()}


def within(inner: Path, outer: Path) -> bool:
    """Whether ``inner`` is ``outer`` or lies under it (paths compared as given)."""
    return inner == outer or outer in inner.parents


def _relation(root: Path, sensitive: Path) -> str | None:
    for candidate in _variants(sensitive):
        if within(root, candidate):
            return "is" if root == candidate else "lies under"
        if within(candidate, root):
            return "contains"
    return None


def _relation_problems(root: Path, label: str, paths: tuple[Path, ...]) -> list[str]:
    """ "is/lies under X" for the first match, else one "contains X, Y" for all it contains."""
    contained = []
    for sensitive in paths:
        relation = _relation(root, sensitive)
        if relation in ("is", "lies under"):
            return [f"{relation} {label} {sensitive}"]
        if relation == "contains":
            contained.append(str(sensitive))
    return [f"contains {label} {', '.join(contained)}"] if contained else []


def _written_problems(written: Path | None, root: Path, host: Host) -> list[str]:
    """A root written under a system directory that resolves outside it: ``/proc/self/cwd``
    resolves to the cwd of whichever process resolves it, a coordinator's as well as this
    check's, so where it resolves here says nothing about where it will."""
    if written is None:
        return []
    lexical = Path(os.path.normpath(written))
    for system in host.system_dirs:
        if within(lexical, system) and not within(root, system):
            return [f"lies under system directory {system} as written ({lexical})"]
    return []


def root_problems(root: Path, host: Host, written: Path | None = None) -> list[str]:
    """Why one resolved input root is unsafe; empty when it is fine. ``written``: the root as
    the policy spells it, made absolute but not resolved."""
    if root == Path(root.anchor):
        return ["is the filesystem root `/`"]
    if not os.path.exists(root):  # noqa: PTH110 - Path.exists raises on EACCES (3.11)
        if os.path.lexists(root):
            return ["cannot be resolved (a symlink loop, or a link this user may not read)"]
        return ["does not exist"]
    return [
        *_written_problems(written, root, host),
        *_relation_problems(root, "system directory", host.system_dirs),
        *_relation_problems(root, "credentials", host.credentials),
        *_socket_problems(root, host),
    ]


def _socket_problems(root: Path, host: Host) -> list[str]:
    problems = []
    for socket in host.sockets:
        relation = _relation(root, socket)
        if relation is not None:
            problems.append(f"{relation} the Docker socket {socket}")
    for ancestor in root.parents:
        for name in sorted(SOCKET_NAMES):
            if _is_socket(ancestor / name):
                problems.append(f"lies under {ancestor}, which holds the socket {name}")
    problems += [f"contains the Unix socket {s}" for s in _sockets_under(root, host.scan_limit)]
    return problems


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.lstat().st_mode)
    except OSError:
        return False


def _sockets_under(root: Path, limit: int) -> Iterator[Path]:
    """Unix sockets below ``root`` among the first ``limit`` entries (symlinks not followed)."""
    if not root.is_dir():
        return
    seen = 0
    for directory, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            seen += 1
            if seen > limit:
                return
            path = Path(directory) / name
            if _is_socket(path):
                yield path
