"""SARIF 2.1.0 rendering of a scan report, shaped for GitHub code scanning: one run, one rule
per rule id, every result located in a repository file (the image's Dockerfile or lock file),
``security-severity`` on rules, stable ``partialFingerprints``. Pure.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .. import __version__
from .model import Finding, ImageReport, ScanReport, Severity

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
TOOL_NAME = "sandbox-images-scan"
_LEVEL = {
    Severity.CRITICAL: "error",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "note",
    Severity.INFO: "note",
}
_SCORE = {
    Severity.CRITICAL: 9.5,
    Severity.HIGH: 8.0,
    Severity.MEDIUM: 5.5,
    Severity.LOW: 2.0,
    Severity.INFO: 0.0,
}
RULE_TEXT = {
    "fs.setuid": "setuid or setgid file in the image",
    "fs.world-writable-directory": "world-writable directory outside the scratch directories",
    "fs.world-writable-file": "world-writable file",
    "fs.package-cache": "package manager cache left in the image",
    "fs.compiler": "compiler present but not declared",
    "config.root-user": "image runs as root by default",
    "config.exposed-ports": "image exposes ports",
    "config.secret": "secret-looking value in the image environment or labels",
    "config.entrypoint": "ENTRYPOINT would wrap the policy's command",
    "config.command-missing": "the policy's command is not in the image",
    "packages.drift-missing": "locked package not installed",
    "packages.drift-version": "installed version differs from the lock",
    "packages.drift-unlocked": "installed package not in the lock",
    "packages.pip-check": "installed package's requirement not satisfied",
    "packages.unlocked-venv": "virtualenv without a lock file",
    "packages.lock-unused": "lock file matches no virtualenv",
}


def _security_severity(finding: Finding) -> float:
    score = finding.properties.get("cvss_score")
    return float(score) if isinstance(score, int | float) else _SCORE[finding.severity]


def _rule(finding: Finding) -> dict[str, Any]:
    text = RULE_TEXT.get(finding.rule_id) or str(
        finding.properties.get("summary") or finding.message
    )
    rule: dict[str, Any] = {
        "id": finding.rule_id,
        "shortDescription": {"text": text[:1000]},
        "defaultConfiguration": {"level": _LEVEL[finding.severity]},
        "properties": {
            "tags": ["security", finding.check],
            "security-severity": f"{_security_severity(finding):.1f}",
        },
    }
    url = finding.properties.get("url")
    if isinstance(url, str) and url.startswith(("https://", "http://")):
        rule["helpUri"] = url
    return rule


def _location(finding: Finding, fallback: str) -> dict[str, Any]:
    physical: dict[str, Any] = {"artifactLocation": {"uri": finding.location.repo_path or fallback}}
    physical["region"] = {"startLine": finding.location.line or 1}
    return {"physicalLocation": physical}


def _fingerprint(image: ImageReport, finding: Finding) -> str:
    # The image name, not its id: the same problem in a rebuilt image is the same alert.
    key = "\0".join(
        [image.image, finding.rule_id, finding.location.image_path or "", finding.message]
    )
    return hashlib.sha256(key.encode()).hexdigest()


def _result(image: ImageReport, finding: Finding, index: int, fallback: str) -> dict[str, Any]:
    return {
        "ruleId": finding.rule_id,
        "ruleIndex": index,
        "level": _LEVEL[finding.severity],
        "message": {"text": f"[{image.image}] {finding.message}"},
        "locations": [_location(finding, fallback)],
        "partialFingerprints": {"sandboxFinding/v1": _fingerprint(image, finding)},
        "properties": {
            "image": image.image,
            "image_id": image.image_id,
            "severity": finding.severity.value,
            **({"image_path": finding.location.image_path} if finding.location.image_path else {}),
        },
    }


def to_sarif(report: ScanReport, dockerfiles: dict[str, str]) -> dict[str, Any]:
    """The SARIF log. ``dockerfiles``: image -> repository path used when a finding has none."""
    rules: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    results = []
    for image in report.images:
        fallback = dockerfiles.get(image.image, "Dockerfile")
        for finding in image.findings:
            if finding.rule_id not in index:
                index[finding.rule_id] = len(rules)
                rules.append(_rule(finding))
            results.append(_result(image, finding, index[finding.rule_id], fallback))
    driver = {"name": TOOL_NAME, "version": __version__, "rules": rules}
    run = {
        "tool": {"driver": driver},
        "automationDetails": {"id": "sandbox-images/"},
        "results": results,
        "properties": {
            "advisory_db": report.advisory_db.model_dump() if report.advisory_db else None,
            "fail_on": report.fail_on,
            "verdict": report.verdict,
        },
    }
    return {"$schema": SCHEMA, "version": "2.1.0", "runs": [run]}
