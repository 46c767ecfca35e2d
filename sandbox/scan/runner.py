"""The scan of one or more images: inspect, read the filesystem once, run every check, build
the SBOM, and write report.json, report.sarif and one SBOM per image. The engine is reached only
through ``ImageSource`` (``sandbox.images`` implements it with docker), so this module stays
free of docker and testable with a tar built in a test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

from .. import __version__
from ..errors import InvalidRequest
from .config import PolicyCommand, check_config
from .dockerfile import check_dockerfile
from .filesystem import check_filesystem
from .inventory import Inventory, build_inventory
from .lockfile import parse_lock
from .model import (
    AdvisoryDbInfo,
    CheckResult,
    FailOn,
    Finding,
    ImageReport,
    Location,
    OnlineInfo,
    ScanReport,
    Severity,
    Verdict,
)
from .online import OnlineSession
from .osv import AdvisoryIndex
from .packages import LockFile, check_packages, match_locks
from .sarif import to_sarif
from .sbom import build_sbom, parse_dpkg_status
from .tarfs import FsSnapshot, distro, snapshot_from_stream
from .vulns import check_vulnerabilities

_USER_RE = re.compile(r"^\s*USER\s", re.IGNORECASE)


class ImageSource(Protocol):
    """What the scanner needs from an engine."""

    def inspect(self, image: str) -> dict[str, Any]:
        """``docker image inspect`` of ``image`` (raises InfrastructureError if missing)."""
        ...

    def filesystem(self, image: str) -> AbstractContextManager[IO[bytes]]:
        """The image's flattened filesystem as a tar stream; nothing from the image runs."""
        ...


@dataclass(frozen=True)
class ScanTarget:
    """One image to scan and where its sources are."""

    image: str
    """Reference, e.g. ``sandbox/dbt:latest``."""
    source_dir: Path | None
    """Directory with its Dockerfile and ``*.lock`` files."""
    policies: tuple[PolicyCommand, ...] = ()
    """Policies that run the image."""
    pinned_ids: Mapping[str, str] = field(default_factory=dict)
    """Tool -> pinned id."""


@dataclass(frozen=True)
class ScanOptions:
    """Everything about a scan that is not an image."""

    repo_root: Path
    output_dir: Path
    fail_on: FailOn = "high"
    unknown_severity: Severity = Severity.HIGH
    index: AdvisoryIndex | None = None
    db: AdvisoryDbInfo | None = None
    online: OnlineSession | None = None
    """Set with ``--online``: the OSV service is asked too (offline results always stay)."""

    @property
    def online_info(self) -> OnlineInfo:
        return self.online.info if self.online else OnlineInfo(status="disabled")


def repo_relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def read_locks(source_dir: Path | None, root: Path) -> list[LockFile]:
    if source_dir is None or not source_dir.is_dir():
        return []
    return [_read_lock(p, root) for p in sorted(source_dir.glob("*.lock"))]


def _read_lock(path: Path, root: Path) -> LockFile:
    """One lock file; InvalidRequest naming it (a scan reads the locks of every image)."""
    where = repo_relative(path, root)
    try:
        pins = parse_lock(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        msg = f"{where}: not UTF-8 text"
        raise InvalidRequest(msg, path=where) from exc
    except InvalidRequest as exc:
        msg = f"{where}: {exc.message}"
        raise InvalidRequest(msg, path=where, **exc.details) from exc
    return LockFile(path.name, where, pins)


def _lock_locations(inventory: Inventory, locks: list[LockFile]) -> dict[tuple[str, str], Location]:
    pairs, _, _ = match_locks(list(inventory.envs), locks)
    return {
        (root, key): Location(repo_path=lock.repo_path, line=pin.line)
        for root, lock in pairs.items()
        for key, pin in lock.pins.items()
    }


def _user_line(dockerfile: Path | None) -> int | None:
    if dockerfile is None or not dockerfile.is_file():
        return None
    lines = dockerfile.read_text(errors="replace").splitlines()
    found = [n for n, line in enumerate(lines, start=1) if _USER_RE.match(line)]
    return found[-1] if found else None


def _locate(
    findings: list[Finding], dockerfile: str | None, user_line: int | None
) -> list[Finding]:
    """Point image-level findings at the Dockerfile (SARIF needs a repository file)."""
    located = []
    for finding in findings:
        where = finding.location
        if where.repo_path is None and dockerfile is not None:
            line = user_line if finding.rule_id == "config.root-user" else where.line
            where = where.model_copy(update={"repo_path": dockerfile, "line": line})
        located.append(finding.model_copy(update={"location": where}))
    return located


def verdict(checks: Sequence[CheckResult], findings: Sequence[Finding], fail_on: FailOn) -> Verdict:
    threshold = Severity(fail_on).rank
    if any(f.severity.rank >= threshold for f in findings):
        return "fail"
    if any(c.status in ("skipped", "error") for c in checks):
        return "incomplete"
    return "pass"


@dataclass
class ImageScan:
    """One image's report plus what is written beside it."""

    report: ImageReport
    sbom: dict[str, Any]
    dockerfile: str | None


def _checks(
    target: ScanTarget,
    config: Mapping[str, Any],
    architecture: str,
    snapshot: FsSnapshot,
    inventory: Inventory,
    options: ScanOptions,
) -> tuple[list[CheckResult], list[Finding], int]:
    dockerfile = target.source_dir / "Dockerfile" if target.source_dir else None
    df_repo = repo_relative(dockerfile, options.repo_root) if dockerfile else None
    labels = dict(config.get("Labels") or {})
    locks = read_locks(target.source_dir, options.repo_root)
    results = [
        check_dockerfile(dockerfile, df_repo or "", options.repo_root),
        check_config(config, target.policies, snapshot),
        check_filesystem(snapshot, labels),
        check_packages(inventory, locks, architecture, df_repo),
    ]
    if options.online is not None and options.index is not None:
        options.online.augment(options.index, [(d.name, d.version) for d in inventory.dists])
    vuln_result, vuln_findings, checked = check_vulnerabilities(
        inventory,
        options.index,
        _lock_locations(inventory, locks),
        options.unknown_severity,
        options.db,
        options.online_info,
    )
    checks = [r for r, _ in results] + [vuln_result]
    findings = [f for _, fs in results for f in fs] + vuln_findings
    return checks, _locate(findings, df_repo, _user_line(dockerfile)), checked


def scan_image(source: ImageSource, target: ScanTarget, options: ScanOptions) -> ImageScan:
    inspect = source.inspect(target.image)
    config = inspect.get("Config") or {}
    architecture = str(inspect.get("Architecture") or "amd64")
    with source.filesystem(target.image) as stream:
        snapshot = snapshot_from_stream(stream)
    inventory = build_inventory(snapshot)
    checks, findings, checked = _checks(target, config, architecture, snapshot, inventory, options)
    labels = {str(k): str(v) for k, v in (config.get("Labels") or {}).items()}
    image_id = str(inspect.get("Id", ""))
    sbom = build_sbom(
        target.image,
        image_id,
        labels,
        inventory,
        parse_dpkg_status(snapshot.dpkg_status),
        architecture,
        distro(snapshot),
    )
    report = ImageReport(
        image=target.image,
        image_id=image_id,
        tools=[p.tool for p in target.policies],
        pinned_ids=dict(target.pinned_ids),
        labels=labels,
        checks=checks,
        findings=sorted(findings, key=lambda f: (-f.severity.rank, f.rule_id)),
        packages_checked=checked,
        verdict=verdict(checks, findings, options.fail_on),
    )
    dockerfile = target.source_dir / "Dockerfile" if target.source_dir else None
    df_repo = repo_relative(dockerfile, options.repo_root) if dockerfile else None
    return ImageScan(report, sbom, df_repo)


def sbom_name(image: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", image.split("@")[0]) + ".cdx.json"


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def overall(images: Sequence[ImageReport]) -> Verdict:
    verdicts = {i.verdict for i in images}
    if "fail" in verdicts:
        return "fail"
    return "incomplete" if "incomplete" in verdicts else "pass"


def iter_scans(
    source: ImageSource, targets: Sequence[ScanTarget], options: ScanOptions
) -> Iterator[ImageScan]:
    for target in targets:
        yield scan_image(source, target, options)


def write_outputs(scans: Sequence[ImageScan], options: ScanOptions) -> ScanReport:
    """Write one SBOM per image, report.json and report.sarif; return the report."""
    options.output_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for scan in scans:
        path = options.output_dir / sbom_name(scan.report.image)
        _write_json(path, scan.sbom)
        images.append(scan.report.model_copy(update={"sbom": str(path)}))
    report = ScanReport(
        generated_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        scanner=f"sandbox {__version__}",
        fail_on=options.fail_on,
        advisory_db=options.db,
        online=options.online_info,
        images=images,
        verdict=overall(images),
    )
    _write_json(options.output_dir / "report.json", report.model_dump(mode="json"))
    dockerfiles = {s.report.image: s.dockerfile for s in scans if s.dockerfile}
    _write_json(options.output_dir / "report.sarif", to_sarif(report, dockerfiles))
    return report
