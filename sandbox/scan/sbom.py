"""CycloneDX 1.5 JSON SBOM of one image, generated from the scanner's own inventory (Python
distributions per environment and Debian packages). ``cyclonedx-py`` can only read an
environment by running its interpreter on the host, and an image's venv is not that, so the
document is built here. Pure: inventory in, dict out.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from .. import __version__
from .inventory import Dist, Inventory
from .packages import marker_env

SPEC_VERSION = "1.5"


@dataclass(frozen=True)
class DebPackage:
    """One installed Debian package (from /var/lib/dpkg/status)."""

    name: str
    version: str
    architecture: str
    source: str = ""


def parse_dpkg_status(text: bytes) -> list[DebPackage]:
    """Installed packages of a dpkg status file (paragraphs of ``Key: value`` lines)."""
    packages = []
    for paragraph in text.decode("utf-8", "replace").split("\n\n"):
        fields: dict[str, str] = {}
        for line in paragraph.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            packages.append(
                DebPackage(
                    fields["Package"],
                    fields.get("Version", ""),
                    fields.get("Architecture", ""),
                    fields.get("Source", "").split(" ")[0],
                )
            )
    return packages


def _q(text: str) -> str:
    return quote(text, safe=".-_~")


def _dist_ref(dist: Dist) -> str:
    return f"pkg:pypi/{dist.key}@{_q(dist.version)}#{dist.env}"


def _dist_component(dist: Dist) -> dict[str, Any]:
    component: dict[str, Any] = {
        "type": "library",
        "bom-ref": _dist_ref(dist),
        "name": dist.name,
        "version": dist.version,
        "purl": f"pkg:pypi/{dist.key}@{_q(dist.version)}",
        "properties": [
            {"name": "sandbox:python:environment", "value": dist.env},
            {"name": "sandbox:python:metadata", "value": dist.path},
        ],
    }
    if dist.license:
        component["licenses"] = [{"license": {"name": dist.license}}]
    return component


def _deb_component(pkg: DebPackage, distro: str) -> dict[str, Any]:
    purl = f"pkg:deb/debian/{_q(pkg.name)}@{_q(pkg.version)}?arch={_q(pkg.architecture)}"
    if distro:
        purl += f"&distro={_q(distro)}"
    component: dict[str, Any] = {
        "type": "library",
        "bom-ref": purl,
        "name": pkg.name,
        "version": pkg.version,
        "purl": purl,
    }
    if pkg.source and pkg.source != pkg.name:
        component["properties"] = [{"name": "sandbox:deb:source", "value": pkg.source}]
    return component


def _dependencies(inventory: Inventory, architecture: str) -> list[dict[str, Any]]:
    """Each distribution -> the installed distributions its requirements name."""
    envs = {e.root: e for e in inventory.envs}
    graph = []
    for root, env in envs.items():
        installed = {d.key: d for d in inventory.in_env(root)}
        environment = marker_env(env, architecture)
        for dist in installed.values():
            depends = sorted(
                {_dist_ref(installed[k]) for k in _required(dist, environment) if k in installed}
            )
            graph.append({"ref": _dist_ref(dist), "dependsOn": depends})
    return graph


def _required(dist: Dist, environment: dict[str, str]) -> set[str]:
    names: set[str] = set()
    for line in dist.requires:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is None or req.marker.evaluate(environment):
            names.add(canonicalize_name(req.name))
    return names


def build_sbom(
    image: str,
    image_id: str,
    labels: Mapping[str, str],
    inventory: Inventory,
    debs: Sequence[DebPackage],
    architecture: str,
    distro: str = "",
) -> dict[str, Any]:
    """The CycloneDX document: the image as metadata.component, packages as components."""
    components = [_dist_component(d) for d in inventory.dists]
    components += [_deb_component(p, distro) for p in debs]
    return {
        "$schema": "http://cyclonedx.org/schema/bom-1.5.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "tools": {
                "components": [{"type": "application", "name": "sandbox", "version": __version__}]
            },
            "component": {
                "type": "container",
                "bom-ref": image_id,
                "name": image,
                "version": image_id,
                "properties": [{"name": k, "value": v} for k, v in sorted(labels.items())],
            },
        },
        "components": components,
        "dependencies": _dependencies(inventory, architecture),
    }
