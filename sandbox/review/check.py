"""``sandbox policy check`` over a policy set: parse every file strictly, then the baseline rules.

A file that does not parse is one finding (the rest of it is not checked); a value the format
itself forbids (root user, host network, an unknown runtime, an unpinned image) is reported
under its specific rule rather than as a plain parse error.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import PolicyFileError
from ..policy import load_yaml
from .baseline import BUILTIN_BASELINE, Baseline
from .catalog import Finding
from .locate import KeyLines
from .roots import Host
from .rules import Subject, check_policy
from .source import PolicySet, PolicySource, load, load_baseline

# Parse errors at these keys are violations of a specific rule.
_PARSE_ERROR_RULES = {
    "user": "SBX002",
    "network": "SBX003",
    "runtime": "SBX010",
    "image.id": "SBX006",
}
BUILTIN_LABEL = "built-in"


@dataclass(frozen=True)
class CheckReport:
    """The findings of one ``policy check`` run."""

    source: str
    baseline: str
    """The baseline file used, or ``built-in``."""
    files: tuple[str, ...]
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not self.findings


def parse_finding(exc: PolicyFileError) -> Finding:
    """A PolicyFileError as a finding: SBX001, or the rule its key belongs to."""
    where = f"{exc.path}:{exc.line}" if exc.line else exc.path
    prefix = f"{where}: {exc.key}: " if exc.key else f"{where}: "
    # The error's text repeats file, line and key; the finding carries them as fields.
    detail = exc.message.removeprefix(prefix).removeprefix("Value error, ")
    message = f"{exc.key}: {detail}" if exc.key else detail
    rule = _PARSE_ERROR_RULES.get(exc.key or "", "SBX001")
    return Finding(rule=rule, path=exc.path, line=exc.line or 1, message=message, key=exc.key)


def subject_of(source: PolicySource, baseline: Baseline, host: Host) -> Subject | Finding:
    """The parsed policy with its key lines, or the finding that says why it does not parse."""
    try:
        loaded = load(source)
    except PolicyFileError as exc:
        return parse_finding(exc)
    # It parsed once already, so this cannot fail; it gives the node tree for key lines.
    _, node = load_yaml(source.text, source.path)
    return Subject(loaded=loaded, lines=KeyLines(node), baseline=baseline, host=host)


def baseline_of(
    policy_set: PolicySet, override: PolicySource | None = None
) -> tuple[Baseline, str, list[Finding]]:
    """The baseline to use, its label, and a finding if its file is bad (built-ins then)."""
    source = override or policy_set.baseline
    if source is None:
        return BUILTIN_BASELINE, BUILTIN_LABEL, []
    try:
        return load_baseline(source), str(source.path), []
    except PolicyFileError as exc:
        return BUILTIN_BASELINE, BUILTIN_LABEL, [parse_finding(exc)]


def check_set(
    policy_set: PolicySet, host: Host, baseline_override: PolicySource | None = None
) -> CheckReport:
    """Every file of the set against the baseline."""
    baseline, label, findings = baseline_of(policy_set, baseline_override)
    for source in policy_set.policies:
        subject = subject_of(source, baseline, host)
        findings += [subject] if isinstance(subject, Finding) else check_policy(subject)
    ordered = sorted(findings, key=lambda f: (f.path, f.line, f.rule, f.message))
    return CheckReport(
        source=policy_set.label,
        baseline=label,
        files=tuple(str(s.path) for s in policy_set.policies),
        findings=tuple(ordered),
    )


def render_text(report: CheckReport) -> str:
    """``file:line: rule: message`` per finding, then a one-line summary."""
    lines = [finding.text() for finding in report.findings]
    count = len(report.findings)
    files = len(report.files)
    summary = f"{files} policy file(s) checked (baseline: {report.baseline}): "
    summary += "no findings" if report.ok else f"{count} finding(s)"
    return "\n".join([*lines, summary]) + "\n"


def report_json(report: CheckReport) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "source": report.source,
        "baseline": report.baseline,
        "files": list(report.files),
        "findings": [asdict(finding) for finding in report.findings],
    }


def render_json(report: CheckReport) -> str:
    return json.dumps(report_json(report), indent=2) + "\n"
