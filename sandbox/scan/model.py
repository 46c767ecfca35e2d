"""The scan report's data model: severities, findings, per-check coverage, per-image and
whole-scan reports. Pydantic at this boundary because the JSON report is what CI and reviewers
consume; ``extra="forbid"`` keeps the shape honest.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

REPORT_VERSION = 1


class Severity(StrEnum):
    """How bad a finding is; ``--fail-on`` compares by ``rank``."""

    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _RANKS[self]


_RANKS = {
    Severity.INFO: 0,
    Severity.LOW: 1,
    Severity.MEDIUM: 2,
    Severity.HIGH: 3,
    Severity.CRITICAL: 4,
}

# The thresholds ``--fail-on`` accepts (``info`` findings never fail a scan).
FailOn = Literal["low", "medium", "high", "critical"]

Verdict = Literal["pass", "fail", "incomplete"]
"""``fail``: a finding at or above the threshold; ``incomplete``: a check could not run."""

CheckStatus = Literal["passed", "findings", "not_applicable", "skipped", "error"]
"""``passed``/``findings``: the check ran (and found nothing / something). ``not_applicable``:
the image has nothing of that kind (the summary says what). ``skipped``/``error``: the check
could not run, so nothing is claimed."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Location(_Model):
    """Where a finding points: a file in the repository and/or a path inside the image."""

    repo_path: str | None = None
    """Repository-relative file (Dockerfile, lock file), for SARIF and reviewers."""
    line: int | None = None
    """1-based line in ``repo_path``."""
    image_path: str | None = None
    """Absolute path inside the image filesystem."""


class Finding(_Model):
    """One problem found in one image."""

    rule_id: str
    """Stable rule identifier, e.g. ``fs.setuid`` or ``vuln.PYSEC-2014-8``."""
    check: str
    """The check that produced it (``dockerfile``, ``config``, ``filesystem``, ``packages``,
    ``vulnerabilities``)."""
    severity: Severity
    """How bad it is."""
    message: str
    """One sentence for humans."""
    location: Location = Location()
    """Where it points."""
    properties: dict[str, Any] = Field(default_factory=dict)
    """Structured extras (package, versions, advisory aliases, counts)."""


class CheckResult(_Model):
    """What one check looked at and what it concluded."""

    name: str
    """Check name."""
    status: CheckStatus
    """See ``CheckStatus``."""
    summary: str
    """What was (or was not) checked, in one line."""
    checked: int = 0
    """How many things the check examined (files, packages, Dockerfile lines...)."""


class AdvisoryDbInfo(_Model):
    """Which advisory database a scan used: a snapshot must say how old it is."""

    path: str
    """Directory or zip the advisories were read from."""
    kind: Literal["directory", "zip"]
    """Layout of ``path``."""
    advisories: int
    """Advisories loaded (withdrawn ones excluded)."""
    packages: int
    """Distinct package names with at least one advisory."""
    newest_modified: str | None
    """The most recent ``modified`` timestamp found: the database is at least this fresh."""
    commit: str | None
    """Git commit of the database checkout, when it is one."""
    sha256: str
    """Digest over the database's file names and contents (identifies the exact snapshot)."""
    skipped_records: int = 0
    """Files that did not parse as OSV records."""


class OnlineInfo(_Model):
    """Whether the online OSV service was used."""

    status: Literal["disabled", "unused", "used", "unreachable"]
    """``disabled`` unless ``--online``; ``unused``: nothing to look up; ``unreachable`` is
    reported, never fatal."""
    url: str | None = None
    """The service queried."""
    detail: str | None = None
    """Why it was unreachable."""


class ImageReport(_Model):
    """Everything the scan learned about one image."""

    image: str
    """Image reference scanned, e.g. ``sandbox/dbt:latest``."""
    image_id: str
    """Id of the scanned image."""
    tools: list[str]
    """Policies that run this image."""
    pinned_ids: dict[str, str]
    """Tool -> id its policy pins (compare with ``image_id``)."""
    labels: dict[str, str]
    """Image labels (revision, lock digest...)."""
    checks: list[CheckResult]
    """Every check, including those that could not run."""
    findings: list[Finding]
    """What is wrong."""
    packages_checked: int
    """Python packages matched against advisories (0 means no vulnerability claim)."""
    sbom: str | None = None
    """Path of the CycloneDX SBOM written for this image."""
    verdict: Verdict
    """``fail``: a finding at or above the threshold; ``incomplete``: a check could not run."""


class ScanReport(_Model):
    """The whole scan: one entry per image plus the database it matched against."""

    version: int = REPORT_VERSION
    """Report format version."""
    generated_at: str
    """RFC 3339 UTC time of the scan."""
    scanner: str
    """``sandbox <version>``."""
    fail_on: FailOn
    """The threshold in force."""
    advisory_db: AdvisoryDbInfo | None
    """The offline database, or null when none was given (vulnerabilities then unchecked)."""
    online: OnlineInfo
    """The online service, if used."""
    images: list[ImageReport]
    """Per-image results."""
    verdict: Verdict
    """Worst verdict over the images."""
