"""Offline advisory matching against an OSV-format database for PyPI: a directory of YAML/JSON
records (the PyPA advisory-database layout) or a zip (as osv.dev publishes per ecosystem).

Parsing and matching are pure (``parse_record``, ``is_affected``, ``AdvisoryIndex.match``);
``load_database`` is the one function that reads files.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ..errors import InvalidRequest
from .cvss import base_score, rating
from .model import AdvisoryDbInfo, Severity

ECOSYSTEM = "PyPI"
RECORD_SUFFIXES = (".yaml", ".yml", ".json")
_GHSA_SEVERITY = {
    "LOW": Severity.LOW,
    "MODERATE": Severity.MEDIUM,
    "MEDIUM": Severity.MEDIUM,
    "HIGH": Severity.HIGH,
    "CRITICAL": Severity.CRITICAL,
}
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Event:
    """One OSV range event: exactly one of the kinds, with its version."""

    kind: str
    """``introduced``, ``fixed`` or ``last_affected``."""
    version: str


@dataclass(frozen=True)
class Affected:
    """One ``affected`` entry for a PyPI package."""

    ranges: tuple[tuple[Event, ...], ...]
    """ECOSYSTEM (or SEMVER) ranges, each a list of events."""
    versions: frozenset[str]
    """Explicitly listed affected versions."""


@dataclass(frozen=True)
class Advisory:
    """What a finding needs from one OSV record."""

    id: str
    aliases: tuple[str, ...]
    summary: str
    modified: str
    severity: Severity | None
    """None when the record states no severity (the caller decides how to rank it)."""
    score: float | None
    """CVSS base score, when a v3 vector was given."""
    url: str
    affected: Mapping[str, tuple[Affected, ...]]
    """Canonical package name -> its affected entries."""

    def fixed_versions(self, package: str) -> list[str]:
        return sorted(
            {
                e.version
                for a in self.affected.get(package, ())
                for r in a.ranges
                for e in r
                if e.kind == "fixed"
            },
            key=_sort_key,
        )


# --- pure parsing -----------------------------------------------------------------------------


def _events(raw: Iterable[Mapping[str, Any]]) -> tuple[Event, ...]:
    events = []
    for item in raw:
        for kind in ("introduced", "fixed", "last_affected"):
            if kind in item:
                events.append(Event(kind, str(item[kind])))
    return tuple(events)


def _affected(entry: Mapping[str, Any]) -> Affected:
    ranges = tuple(
        _events(r.get("events") or [])
        for r in entry.get("ranges") or []
        if r.get("type") in ("ECOSYSTEM", "SEMVER")
    )
    return Affected(ranges, frozenset(str(v) for v in entry.get("versions") or []))


def _severity(record: Mapping[str, Any]) -> tuple[Severity | None, float | None]:
    scores = [base_score(str(s.get("score", ""))) for s in record.get("severity") or []]
    best = max((s for s in scores if s is not None), default=None)
    if best is not None:
        return rating(best), best
    named = [str((record.get("database_specific") or {}).get("severity", ""))]
    for entry in record.get("affected") or []:
        for key in ("database_specific", "ecosystem_specific"):
            named.append(str((entry.get(key) or {}).get("severity", "")))
    ranked = [_GHSA_SEVERITY[n.upper()] for n in named if n.upper() in _GHSA_SEVERITY]
    return (max(ranked, key=lambda s: s.rank) if ranked else None), None


def _url(record: Mapping[str, Any]) -> str:
    refs = record.get("references") or []
    for kind in ("ADVISORY", "WEB"):
        for ref in refs:
            if ref.get("type") == kind and ref.get("url"):
                return str(ref["url"])
    return f"https://osv.dev/vulnerability/{record.get('id', '')}"


def parse_record(record: Mapping[str, Any]) -> Advisory | None:
    """An Advisory for the PyPI packages of one OSV record; None if withdrawn or not PyPI."""
    if record.get("withdrawn") or not record.get("id"):
        return None
    affected: dict[str, list[Affected]] = {}
    for entry in record.get("affected") or []:
        package = entry.get("package") or {}
        if package.get("ecosystem") != ECOSYSTEM or not package.get("name"):
            continue
        affected.setdefault(canonicalize_name(str(package["name"])), []).append(_affected(entry))
    if not affected:
        return None
    severity, score = _severity(record)
    summary = str(record.get("summary") or record.get("details") or "").strip()
    return Advisory(
        id=str(record["id"]),
        aliases=tuple(str(a) for a in record.get("aliases") or []),
        summary=summary.split("\n", 1)[0][:300],
        modified=str(record.get("modified") or ""),
        severity=severity,
        score=score,
        url=_url(record),
        affected={k: tuple(v) for k, v in affected.items()},
    )


# --- pure matching ----------------------------------------------------------------------------


def _sort_key(version: str) -> tuple[int, Version | str]:
    if version == "0":
        return (0, "")
    try:
        return (1, Version(version))
    except InvalidVersion:
        return (2, version)


def in_range(version: Version, events: Iterable[Event]) -> bool:
    """OSV's evaluation: walk the events in version order, toggling on ``introduced`` and off
    past ``fixed`` (inclusive) or ``last_affected`` (exclusive). Unparsable versions are
    skipped, which can only under-report for that one event."""
    affected = False
    for event in sorted(events, key=lambda e: _sort_key(e.version)):
        if event.kind == "introduced" and event.version == "0":
            affected = True
            continue
        try:
            bound = Version(event.version)
        except InvalidVersion:
            continue
        if event.kind == "introduced":
            affected = affected or version >= bound
        elif event.kind == "fixed":
            affected = affected and version < bound
        elif event.kind == "last_affected":
            affected = affected and version <= bound
    return affected


def is_affected(version: str, entry: Affected) -> bool:
    """Whether ``version`` is affected: listed explicitly, or inside any range."""
    if version in entry.versions:
        return True
    try:
        parsed = Version(version)
    except InvalidVersion:
        return False
    if any(_equal(parsed, listed) for listed in entry.versions):
        return True
    return any(in_range(parsed, events) for events in entry.ranges)


def _equal(version: Version, listed: str) -> bool:
    try:
        return Version(listed) == version
    except InvalidVersion:
        return False


@dataclass
class AdvisoryIndex:
    """Advisories by canonical package name."""

    by_package: dict[str, list[Advisory]] = field(default_factory=dict)

    def add(self, advisory: Advisory) -> None:
        for package in advisory.affected:
            self.by_package.setdefault(package, []).append(advisory)

    @property
    def count(self) -> int:
        return len({a.id for items in self.by_package.values() for a in items})

    def match(self, name: str, version: str) -> list[Advisory]:
        package = canonicalize_name(name)
        return [
            advisory
            for advisory in self.by_package.get(package, [])
            if any(is_affected(version, entry) for entry in advisory.affected[package])
        ]


# --- reading ----------------------------------------------------------------------------------


def _decode(name: str, raw: bytes) -> Any:
    if name.endswith(".json"):
        return json.loads(raw)
    return yaml.load(raw, Loader=_Loader)  # noqa: S506 - a safe loader (C or pure Python)


def _directory_files(root: Path) -> Iterator[tuple[str, bytes]]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in RECORD_SUFFIXES and ".git" not in path.parts:
            yield path.relative_to(root).as_posix(), path.read_bytes()


def _zip_files(path: Path) -> Iterator[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            if name.endswith(RECORD_SUFFIXES):
                yield name, archive.read(name)


def git_commit(root: Path) -> str | None:
    """HEAD of a git checkout, read from .git without running git."""
    git = root / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head.removeprefix("ref: ")
        loose = git / ref
        if loose.is_file():
            return loose.read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split(" ", 1)[0]
    except OSError:
        return None
    return None


def load_database(path: Path) -> tuple[AdvisoryIndex, AdvisoryDbInfo]:
    """Read every record under ``path`` (directory or zip). InvalidRequest if it is neither."""
    if path.is_dir():
        kind, files = "directory", _directory_files(path)
    elif path.is_file() and zipfile.is_zipfile(path):
        kind, files = "zip", _zip_files(path)
    else:
        msg = f"advisory database {path} is neither a directory nor a zip of OSV records"
        raise InvalidRequest(msg, path=str(path))
    index, digest, newest, skipped = AdvisoryIndex(), hashlib.sha256(), "", 0
    for name, raw in files:
        digest.update(name.encode() + b"\0" + hashlib.sha256(raw).digest())
        try:
            advisory = parse_record(_decode(name, raw))
        except (ValueError, yaml.YAMLError, AttributeError, TypeError):
            skipped += 1
            continue
        if advisory is not None:
            index.add(advisory)
            newest = max(newest, advisory.modified)
    info = AdvisoryDbInfo(
        path=str(path),
        kind=kind,
        advisories=index.count,
        packages=len(index.by_package),
        newest_modified=newest or None,
        commit=git_commit(path) if kind == "directory" else None,
        sha256=digest.hexdigest(),
        skipped_records=skipped,
    )
    return index, info
