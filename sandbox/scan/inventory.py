"""The Python package inventory of an image, read from its filesystem snapshot: virtualenvs
(``pyvenv.cfg``) and every installed distribution's metadata (``*.dist-info/METADATA``,
``*.egg-info``). Nothing in the image runs; this is what ``pip list`` would say.

Pure: snapshot in, frozen values out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.parser import BytesHeaderParser

from packaging.utils import canonicalize_name

from .tarfs import FsSnapshot

SYSTEM = "system"
_SITE_RE = re.compile(r"^(?P<site>.*/(site|dist)-packages)/[^/]+$")


@dataclass(frozen=True)
class PythonEnv:
    """A virtualenv (or the system interpreter's site directories)."""

    root: str
    """The venv directory, or ``system``."""
    python_version: str
    """``3.11.2`` from pyvenv.cfg ('' when unknown)."""

    @property
    def name(self) -> str:
        return self.root.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Dist:
    """One installed distribution."""

    name: str
    """Project name as its metadata spells it."""
    version: str
    """Installed version."""
    env: str
    """``PythonEnv.root`` it belongs to."""
    path: str
    """Metadata file path in the image."""
    requires: tuple[str, ...] = ()
    """``Requires-Dist`` lines."""
    license: str = ""
    """``License-Expression`` (preferred) or a short ``License``."""

    @property
    def key(self) -> str:
        return canonicalize_name(self.name)

    @property
    def purl(self) -> str:
        return f"pkg:pypi/{self.key}@{self.version}"


@dataclass(frozen=True)
class Inventory:
    """Every Python environment and distribution found."""

    envs: tuple[PythonEnv, ...]
    dists: tuple[Dist, ...]

    def in_env(self, root: str) -> list[Dist]:
        return [d for d in self.dists if d.env == root]


def parse_pyvenv_cfg(text: bytes) -> dict[str, str]:
    values = {}
    for line in text.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip().lower()] = value.strip()
    return values


def _license(headers: dict[str, str]) -> str:
    expression = headers.get("License-Expression", "").strip()
    if expression:
        return expression
    text = headers.get("License", "").strip()
    # Some projects paste the whole licence text here; only a short name is an identifier.
    return text if text and "\n" not in text and len(text) <= 64 else ""


def parse_metadata(raw: bytes, path: str, env: str) -> Dist | None:
    """A distribution from METADATA/PKG-INFO bytes; None when it names no project/version."""
    message = BytesHeaderParser().parsebytes(raw)
    name = str(message.get("Name", "")).strip()
    version = str(message.get("Version", "")).strip()
    if not name or not version:
        return None
    requires = tuple(str(r).strip() for r in message.get_all("Requires-Dist") or [])
    headers = {k: str(v) for k, v in message.items()}
    return Dist(name, version, env, path, requires, _license(headers))


def _env_for(path: str, venv_roots: list[str]) -> str:
    for root in venv_roots:
        if path.startswith(root + "/"):
            return root
    return SYSTEM


def build_inventory(snapshot: FsSnapshot) -> Inventory:
    envs = [
        PythonEnv(cfg_path.rsplit("/", 1)[0], parse_pyvenv_cfg(raw).get("version", ""))
        for cfg_path, raw in sorted(snapshot.pyvenv_cfgs.items())
    ]
    roots = sorted((e.root for e in envs), key=len, reverse=True)
    dists = []
    for path, raw in sorted(snapshot.metadata.items()):
        if not _SITE_RE.match(path.removesuffix("/METADATA").removesuffix("/PKG-INFO")):
            continue
        dist = parse_metadata(raw, path, _env_for(path, roots))
        if dist is not None:
            dists.append(dist)
    if any(d.env == SYSTEM for d in dists):
        envs.append(PythonEnv(SYSTEM, ""))
    return Inventory(tuple(envs), tuple(dists))
