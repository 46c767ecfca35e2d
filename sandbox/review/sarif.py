"""``policy check --format sarif``: findings as SARIF 2.1.0, the format GitHub code scanning
reads (``github/codeql-action/upload-sarif``), so each finding shows as an alert on its line.

Rule metadata carries ``security-severity`` (GitHub's severity scale) and the help text;
result locations are repository-relative when the file lies under the working directory. Pure.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Any

from .. import __version__
from .catalog import RULES, Finding, Rule
from .check import CheckReport

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
TOOL_NAME = "sandbox-policy-check"


def _rule(rule: Rule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "name": rule.name,
        "shortDescription": {"text": rule.summary},
        "fullDescription": {"text": rule.summary},
        "help": {
            "text": f"{rule.help} (docs/policies.md)",
            "markdown": f"**{rule.id} {rule.name}**: {rule.help}\n\nSee `docs/policies.md`.",
        },
        "defaultConfiguration": {"level": rule.level},
        "properties": {
            "tags": ["security", "policy"],
            "security-severity": f"{rule.severity:.1f}",
            "precision": "high",
            "justifiable": rule.justifiable,
        },
    }


def artifact_uri(path: str, base: Path) -> str:
    """A path as a SARIF artifact URI: relative to ``base`` when under it, else a file URI."""
    absolute = (base / path).resolve()
    try:
        return PurePosixPath(absolute.relative_to(base.resolve())).as_posix()
    except ValueError:
        return absolute.as_uri()


def _fingerprint(finding: Finding) -> str:
    """Stable across line moves, so an alert follows its key when lines are inserted above."""
    text = f"{finding.rule}\0{finding.path}\0{finding.key or ''}\0{finding.message}"
    return hashlib.sha256(text.encode()).hexdigest()


def _result(finding: Finding, index: dict[str, int], base: Path) -> dict[str, Any]:
    rule = RULES[index[finding.rule]]
    return {
        "ruleId": finding.rule,
        "ruleIndex": index[finding.rule],
        "level": rule.level,
        "message": {"text": finding.message},
        "locations": [
            {
                "physicalLocation": {
                    "artifactLocation": {"uri": artifact_uri(finding.path, base)},
                    "region": {"startLine": finding.line},
                }
            }
        ],
        "partialFingerprints": {"sandboxPolicyFinding/v1": _fingerprint(finding)},
    }


def sarif_log(report: CheckReport, base: Path) -> dict[str, Any]:
    """The SARIF log of one check run; ``base`` is what URIs are relative to (the repo)."""
    index = {rule.id: i for i, rule in enumerate(RULES)}
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": TOOL_NAME,
                        "version": __version__,
                        "rules": [_rule(rule) for rule in RULES],
                    }
                },
                "results": [_result(f, index, base) for f in report.findings],
                "columnKind": "unicodeCodePoints",
            }
        ],
    }


def render_sarif(report: CheckReport, base: Path) -> str:
    return json.dumps(sarif_log(report, base), indent=2) + "\n"
