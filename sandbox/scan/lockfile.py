"""Hash-pinned lock files (``uv pip compile --generate-hashes`` / pip-tools output): which
project at which version, on which line. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from ..errors import InvalidRequest

_OPTION_RE = re.compile(r"\s--?[a-z][a-z-]*(?:[= ]\S+)?")
_COMMENT_RE = re.compile(r"(^|\s)#.*$")


@dataclass(frozen=True)
class Locked:
    """One pinned requirement of a lock file."""

    name: str
    """Project name as written."""
    version: str
    """The pinned version (``==`` or ``===``)."""
    line: int
    """1-based line where the requirement starts."""
    marker: Marker | None = None
    """Environment marker; the pin applies only where it evaluates true."""

    @property
    def key(self) -> str:
        return canonicalize_name(self.name)


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, joined text) with comments removed and ``\\`` continuations joined."""
    start, parts = 0, list[str]()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _COMMENT_RE.sub("", raw).rstrip()
        if not parts:
            start = number
        if line.endswith("\\"):
            parts.append(line[:-1])
            continue
        parts.append(line)
        joined = " ".join(p.strip() for p in parts).strip()
        parts = []
        if joined:
            yield start, joined


def _pinned_version(req: Requirement, line: int) -> str:
    specs = list(req.specifier)
    if len(specs) != 1 or specs[0].operator not in ("==", "==="):
        msg = f"line {line}: {req.name} is not pinned to one version ({req.specifier or 'any'})"
        raise InvalidRequest(msg, line=line)
    return specs[0].version


def parse_lock(text: str) -> dict[str, Locked]:
    """Canonical name -> pin. Raises InvalidRequest on an unpinned or unparsable line."""
    locked: dict[str, Locked] = {}
    for number, line in logical_lines(text):
        if line.startswith("-"):
            continue  # an option line (--index-url, -r ...), not a requirement
        spec = _OPTION_RE.sub("", " " + line).strip()
        try:
            req = Requirement(spec)
        except InvalidRequirement as exc:
            msg = f"line {number}: not a requirement: {exc}"
            raise InvalidRequest(msg, line=number) from exc
        pin = Locked(req.name, _pinned_version(req, number), number, req.marker)
        locked[pin.key] = pin
    return locked
