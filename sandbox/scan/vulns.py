"""Known-vulnerability check: every inventoried Python distribution against the advisory index.
The result always says how many packages were checked against which database; with no
database, or nothing to check, it claims nothing. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping

from .inventory import Dist, Inventory
from .model import AdvisoryDbInfo, CheckResult, Finding, Location, OnlineInfo, Severity
from .osv import Advisory, AdvisoryIndex

CHECK = "vulnerabilities"


def _finding(dist: Dist, advisory: Advisory, where: Location, unknown: Severity) -> Finding:
    severity = advisory.severity or unknown
    fixed = advisory.fixed_versions(dist.key)
    fix = f"; fixed in {', '.join(fixed)}" if fixed else "; no fixed version listed"
    assumed = "" if advisory.severity else f" (severity not stated, ranked {unknown.value})"
    aliases = f" ({', '.join(advisory.aliases[:3])})" if advisory.aliases else ""
    return Finding(
        rule_id=f"vuln.{advisory.id}",
        check=CHECK,
        severity=severity,
        message=f"{dist.name} {dist.version} is affected by {advisory.id}{aliases}{fix}"
        f"{assumed}: {advisory.summary}",
        location=where,
        properties={
            "package": dist.name,
            "version": dist.version,
            "advisory": advisory.id,
            "aliases": list(advisory.aliases),
            "fixed": fixed,
            "url": advisory.url,
            "summary": advisory.summary,
            "cvss_score": advisory.score,
            "severity_source": "advisory" if advisory.severity else "assumed",
            "environment": dist.env,
        },
    )


def distinct(advisories: list[Advisory]) -> list[Advisory]:
    """One advisory per vulnerability. A record naming another's id among its aliases is the
    same one (a PYSEC record and its GHSA, as osv.dev's zip and service both carry): the record
    stating the highest severity stands for them, since the PYSEC one often states none.
    Records that only share some third alias stay apart: the PyPA database has distinct CVEs,
    with different fixes, that list one GHSA by mistake (zope's PYSEC-2021-88 and -104)."""
    ranked = sorted(advisories, key=lambda a: -a.severity.rank if a.severity else 1)
    kept: list[Advisory] = []
    for advisory in ranked:
        if not any(advisory.id in k.aliases or k.id in advisory.aliases for k in kept):
            kept.append(advisory)
    return kept


def _db_words(db: AdvisoryDbInfo | None, online: OnlineInfo) -> str:
    parts = []
    if db is not None:
        date = (db.newest_modified or "unknown date")[:10]
        parts.append(f"{db.path} ({db.advisories} advisories, newest {date})")
    if online.status == "used":
        parts.append(f"online {online.url}")
    elif online.status == "unreachable":
        parts.append(f"online {online.url} unreachable")
    return "; ".join(parts)


def check_vulnerabilities(
    inventory: Inventory,
    index: AdvisoryIndex | None,
    locations: Mapping[tuple[str, str], Location],
    unknown: Severity,
    db: AdvisoryDbInfo | None,
    online: OnlineInfo,
) -> tuple[CheckResult, list[Finding], int]:
    """(result, findings, packages checked). ``locations``: (env, canonical name) -> lock line."""
    dists = list(inventory.dists)
    usable = index is not None and (db is not None or online.status == "used")
    if not usable or index is None:
        summary = (
            f"no advisory database (--advisory-db) and no online service: {len(dists)} "
            "Python package(s) NOT checked for known vulnerabilities"
        )
        return CheckResult(name=CHECK, status="skipped", summary=summary), [], 0
    if not dists:
        summary = "no Python packages in the image: no vulnerability claim is made"
        return CheckResult(name=CHECK, status="not_applicable", summary=summary), [], 0
    findings = []
    for dist in dists:
        where = locations.get((dist.env, dist.key), Location(image_path=dist.path))
        findings += [
            _finding(dist, a, where, unknown)
            for a in distinct(index.match(dist.name, dist.version))
        ]
    summary = (
        f"{len(dists)} Python package(s) checked against {_db_words(db, online)}; "
        "Debian packages are inventoried in the SBOM, not matched"
    )
    status = "findings" if findings else "passed"
    result = CheckResult(name=CHECK, status=status, summary=summary, checked=len(dists))
    return result, findings, len(dists)
