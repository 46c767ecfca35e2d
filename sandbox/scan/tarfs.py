"""One streaming pass over an image's filesystem tar (``docker export`` of a never-started
container) that keeps only what the checks need: modes, link targets, and the few small files
that describe installed packages. Nothing from the image is executed.

Pure: it reads a binary stream and returns a frozen snapshot; memory stays bounded because file
contents are kept only for package metadata (each capped).
"""

from __future__ import annotations

import re
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

# Package metadata files are small; a huge one is either hostile or not metadata.
MAX_METADATA_BYTES = 1024 * 1024
MAX_DPKG_STATUS_BYTES = 32 * 1024 * 1024

_METADATA_RE = re.compile(r"/[^/]+\.(dist-info/METADATA|egg-info/PKG-INFO|egg-info)$")
_PYVENV_RE = re.compile(r"/pyvenv\.cfg$")
DPKG_STATUS = "/var/lib/dpkg/status"
OS_RELEASE = frozenset({"/etc/os-release", "/usr/lib/os-release"})

CACHE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("apt", re.compile(r"^/var/cache/apt/(archives/[^/]+\.deb|[^/]+\.bin)$")),
    ("apt-lists", re.compile(r"^/var/lib/apt/lists/(?!lock$)[^/]+$")),
    ("pip", re.compile(r"/\.cache/pip/|^/tmp/pip-|^/root/\.cache/pip/")),
    ("uv", re.compile(r"/\.cache/uv/")),
    ("npm", re.compile(r"/\.npm/_cacache/")),
    ("dnf/yum", re.compile(r"^/var/cache/(dnf|yum)/.+")),
    ("apk", re.compile(r"^/var/cache/apk/.+")),
)


@dataclass(frozen=True)
class Entry:
    """A non-directory filesystem entry."""

    kind: str
    """``file``, ``symlink``, ``hardlink`` or ``other``."""
    mode: int
    """Permission bits including setuid/setgid/sticky."""
    size: int
    """Bytes (0 for links)."""
    link: str = ""
    """Symlink or hard-link target."""


@dataclass
class CacheUse:
    """Files found under one package manager's cache."""

    files: int = 0
    bytes: int = 0
    example: str = ""


@dataclass
class FsSnapshot:
    """What the checks need to know about an image filesystem."""

    entries: dict[str, Entry] = field(default_factory=dict)
    """Absolute path -> entry, for every non-directory."""
    dirs: dict[str, int] = field(default_factory=dict)
    """Absolute path -> mode, for every directory."""
    metadata: dict[str, bytes] = field(default_factory=dict)
    """Absolute path of each METADATA / PKG-INFO -> its bytes."""
    pyvenv_cfgs: dict[str, bytes] = field(default_factory=dict)
    """Absolute path of each ``pyvenv.cfg`` -> its bytes."""
    dpkg_status: bytes = b""
    """``/var/lib/dpkg/status``, when present."""
    os_release: bytes = b""
    """``os-release``, when present (names the distribution for package URLs)."""
    caches: dict[str, CacheUse] = field(default_factory=dict)
    """Package-manager cache name -> what was found."""
    oversized: list[str] = field(default_factory=list)
    """Metadata files skipped because they were larger than the cap."""


def absolute(name: str) -> str:
    """A tar member name as an absolute, normalized image path."""
    trimmed = name.removeprefix("./").strip("/")
    return "/" + trimmed if trimmed else "/"


def _kind(member: tarfile.TarInfo) -> str:
    if member.isreg():
        return "file"
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hardlink"
    return "other"


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    return handle.read() if handle is not None else b""


def _note_cache(snapshot: FsSnapshot, path: str, size: int) -> None:
    for name, pattern in CACHE_PATTERNS:
        if pattern.search(path):
            use = snapshot.caches.setdefault(name, CacheUse(example=path))
            use.files += 1
            use.bytes += size
            return


def _keep_content(snapshot: FsSnapshot, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    path = absolute(member.name)
    if _METADATA_RE.search(path) and member.isreg():
        if member.size > MAX_METADATA_BYTES:
            snapshot.oversized.append(path)
        else:
            snapshot.metadata[path] = _read(tar, member)
    elif _PYVENV_RE.search(path) and member.isreg() and member.size <= MAX_METADATA_BYTES:
        snapshot.pyvenv_cfgs[path] = _read(tar, member)
    elif path == DPKG_STATUS and member.isreg() and member.size <= MAX_DPKG_STATUS_BYTES:
        snapshot.dpkg_status = _read(tar, member)
    elif path in OS_RELEASE and member.isreg() and member.size <= MAX_METADATA_BYTES:
        snapshot.os_release = _read(tar, member)


def add_member(snapshot: FsSnapshot, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    """Record one tar member (the unit the streaming reader and the tests share)."""
    path = absolute(member.name)
    mode = stat.S_IMODE(member.mode)
    if member.isdir():
        snapshot.dirs[path] = mode
        return
    snapshot.entries[path] = Entry(_kind(member), mode, member.size, member.linkname)
    if member.isreg():
        _note_cache(snapshot, path, member.size)
    _keep_content(snapshot, tar, member)


def iter_members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    member = tar.next()
    while member is not None:
        yield member
        member = tar.next()


def snapshot_from_stream(stream: IO[bytes]) -> FsSnapshot:
    """Read a tar stream once (``r|*``: no seeking, constant memory besides the snapshot)."""
    snapshot = FsSnapshot()
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in iter_members(tar):
            add_member(snapshot, tar, member)
    return snapshot


def distro(snapshot: FsSnapshot) -> str:
    """``debian-12`` from os-release ('' when unknown)."""
    fields = {}
    for line in snapshot.os_release.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition("=")
        fields[key.strip()] = value.strip().strip('"')
    if "ID" in fields and "VERSION_ID" in fields:
        return f"{fields['ID']}-{fields['VERSION_ID']}"
    return fields.get("ID", "")


def resolve(snapshot: FsSnapshot, path: str, depth: int = 0) -> str | None:
    """Follow symlinks inside the snapshot; the final path of a file, or None if dangling."""
    if depth > 40:
        return None
    entry = snapshot.entries.get(path)
    if entry is None:
        return _resolve_through_dir_links(snapshot, path, depth)
    if entry.kind != "symlink":
        return path
    target = entry.link
    if not target.startswith("/"):
        target = path.rsplit("/", 1)[0] + "/" + target
    return resolve(snapshot, _normalize(target), depth + 1)


def _resolve_through_dir_links(snapshot: FsSnapshot, path: str, depth: int) -> str | None:
    """``/bin/python3`` on a merged-/usr system: ``/bin`` is a symlink to ``usr/bin``."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts)):
        prefix = "/" + "/".join(parts[:i])
        entry = snapshot.entries.get(prefix)
        if entry is not None and entry.kind == "symlink":
            target = (
                entry.link
                if entry.link.startswith("/")
                else prefix.rsplit("/", 1)[0] + "/" + entry.link
            )
            rest = "/".join(parts[i:])
            return resolve(snapshot, _normalize(target + "/" + rest), depth + 1)
    return None


def _normalize(path: str) -> str:
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
        else:
            parts.append(part)
    return "/" + "/".join(parts)
