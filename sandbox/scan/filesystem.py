"""Filesystem checks over a ``FsSnapshot``: setuid/setgid files, world-writable paths outside
the scratch directories, package-manager caches, and compilers the image does not declare.

Pure: snapshot in, findings out.
"""

from __future__ import annotations

import re

from .model import CheckResult, Finding, Location, Severity
from .tarfs import FsSnapshot

CHECK = "filesystem"
# World-writable scratch directories every Linux root has; sticky, so users cannot delete each
# other's files, and the runtime mounts a tmpfs over /tmp anyway (contract section 6).
STICKY_SCRATCH = frozenset({"/tmp", "/var/tmp", "/run/lock", "/var/lock", "/dev/shm"})  # noqa: S108 - image paths, not host temp files
# Label an image sets to declare the compilers it needs at run time (comma-separated names).
COMPILERS_LABEL = "io.sandbox.compilers"
_BIN_DIR_RE = re.compile(r"^(/usr(/local)?)?/s?bin/|^/opt/.+/bin/")
_COMPILER_RE = re.compile(
    r"^(?:[a-z0-9_]+-linux-gnu-)?(gcc|g\+\+|cc|c\+\+|clang|clang\+\+|tcc|gfortran|rustc|go)"
    r"(?:-[0-9.]+)?$"
)


def _under_scratch(path: str) -> bool:
    return path == "/tmp" or path.startswith("/tmp/")  # noqa: S108 - an image path


def setuid_findings(snapshot: FsSnapshot) -> list[Finding]:
    findings = []
    for path, entry in sorted(snapshot.entries.items()):
        if entry.kind in ("file", "hardlink") and entry.mode & 0o6000:
            bits = "setuid" if entry.mode & 0o4000 else "setgid"
            findings.append(
                Finding(
                    rule_id="fs.setuid",
                    check=CHECK,
                    severity=Severity.HIGH,
                    message=f"{path} is {bits} (mode {entry.mode:04o}): a way to gain privileges",
                    location=Location(image_path=path),
                    properties={"mode": f"{entry.mode:04o}"},
                )
            )
    return findings


def world_writable_findings(snapshot: FsSnapshot) -> list[Finding]:
    findings = []
    for path, mode in sorted(snapshot.dirs.items()):
        allowed = path in STICKY_SCRATCH and mode & 0o1000
        if mode & 0o002 and not allowed and not _under_scratch(path):
            findings.append(_writable(path, mode, "directory"))
    for path, entry in sorted(snapshot.entries.items()):
        if entry.kind == "file" and entry.mode & 0o002 and not _under_scratch(path):
            findings.append(_writable(path, entry.mode, "file"))
    return findings


def _writable(path: str, mode: int, what: str) -> Finding:
    return Finding(
        rule_id=f"fs.world-writable-{what}",
        check=CHECK,
        severity=Severity.MEDIUM,
        message=f"{what} {path} is world-writable (mode {mode:04o})",
        location=Location(image_path=path),
        properties={"mode": f"{mode:04o}"},
    )


def cache_findings(snapshot: FsSnapshot) -> list[Finding]:
    return [
        Finding(
            rule_id="fs.package-cache",
            check=CHECK,
            severity=Severity.LOW,
            message=f"{name} cache left in the image: {use.files} file(s), "
            f"{use.bytes / 1e6:.1f} MB (e.g. {use.example})",
            location=Location(image_path=use.example),
            properties={"cache": name, "files": use.files, "bytes": use.bytes},
        )
        for name, use in sorted(snapshot.caches.items())
    ]


def find_compilers(snapshot: FsSnapshot) -> dict[str, list[str]]:
    """Compiler name -> paths providing it (files and symlinks in bin directories)."""
    found: dict[str, list[str]] = {}
    for path in sorted(snapshot.entries):
        if not _BIN_DIR_RE.match(path):
            continue
        match = _COMPILER_RE.match(path.rsplit("/", 1)[1])
        if match:
            found.setdefault(match.group(1), []).append(path)
    return found


def compiler_findings(snapshot: FsSnapshot, labels: dict[str, str]) -> list[Finding]:
    declared = {n.strip() for n in labels.get(COMPILERS_LABEL, "").split(",") if n.strip()}
    return [
        Finding(
            rule_id="fs.compiler",
            check=CHECK,
            severity=Severity.MEDIUM,
            message=f"compiler {name} present ({', '.join(paths[:3])}) but not declared in "
            f"the {COMPILERS_LABEL} label",
            location=Location(image_path=paths[0]),
            properties={"compiler": name, "paths": paths},
        )
        for name, paths in find_compilers(snapshot).items()
        if name not in declared and "any" not in declared
    ]


def check_filesystem(
    snapshot: FsSnapshot, labels: dict[str, str]
) -> tuple[CheckResult, list[Finding]]:
    findings = [
        *setuid_findings(snapshot),
        *world_writable_findings(snapshot),
        *cache_findings(snapshot),
        *compiler_findings(snapshot, labels),
    ]
    examined = len(snapshot.entries) + len(snapshot.dirs)
    if examined == 0:
        return CheckResult(
            name=CHECK, status="error", summary="the image filesystem was empty or unreadable"
        ), findings
    summary = (
        f"{examined} paths: setuid/setgid, world-writable, package caches, compilers"
        f" ({len(findings)} finding(s))"
    )
    status = "findings" if findings else "passed"
    return CheckResult(name=CHECK, status=status, summary=summary, checked=examined), findings
