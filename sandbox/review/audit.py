"""``sandbox policy audit``: per tool, the effective container settings (exactly the engine
kwargs ``spec.build_spec`` produces), its relaxations with their justifications, the check
findings and a risk summary. Pure apart from the input-root rule it runs (``roots``).

Run-specific values (run id, owner, deadline, input and staging paths) are placeholders; the
settings are computed for a request that uses every input and an output directory, at the
policy's full timeout, so they show the most a request can get.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from ..policy import LoadedPolicy
from ..spec import (
    LABEL_DEADLINE,
    LABEL_OWNER_HOST,
    LABEL_OWNER_PID,
    LABEL_OWNER_START,
    Owner,
    build_spec,
)
from .catalog import Finding
from .check import baseline_of, subject_of
from .relax import Relaxation, relaxations
from .roots import Host
from .rules import Subject, check_policy
from .source import PolicySet

RiskLevel = Literal["low", "medium", "high"]
_RANK: dict[RiskLevel, int] = {"low": 0, "medium": 1, "high": 2}

RUN_ID = "<run_id>"
INPUT_NAME = "<name>"
INPUT_SOURCE = "<host path under an allowed root>"
STAGING_DIR = "<staging_dir>"
STDOUT_PIPE = "<stdout pipe>"
LABEL_PLACEHOLDERS = {
    LABEL_OWNER_PID: "<owner_pid>",
    LABEL_OWNER_START: "<owner_start>",
    LABEL_OWNER_HOST: "<owner_host>",
    LABEL_DEADLINE: "<deadline>",
}


@dataclass(frozen=True)
class RiskReason:
    level: RiskLevel
    text: str


@dataclass(frozen=True)
class Risk:
    """The highest level among the reasons (low when there are none)."""

    level: RiskLevel
    reasons: tuple[RiskReason, ...]


@dataclass(frozen=True)
class AuditEntry:
    """Everything a reviewer needs about one tool."""

    tool: str
    file: str
    sha256: str
    description: str
    image: str
    image_id: str
    command: tuple[str, ...]
    timeout_s: float
    input_roots: tuple[tuple[str, str], ...]
    """(as written, resolved) per allowed root."""
    relaxations: tuple[Relaxation, ...]
    findings: tuple[Finding, ...]
    risk: Risk
    create_kwargs: dict[str, Any]


@dataclass(frozen=True)
class AuditReport:
    source: str
    baseline: str
    entries: tuple[AuditEntry, ...]
    unparsed: tuple[Finding, ...]
    """Files that do not parse (and the baseline's finding, if it is bad)."""


def effective_kwargs(loaded: LoadedPolicy) -> dict[str, Any]:
    """``build_spec(...).create_kwargs()`` for the largest request, with placeholders."""
    policy = loaded.policy
    inputs = {INPUT_NAME: INPUT_SOURCE} if policy.inputs.max > 0 else {}
    spec = build_spec(
        policy,
        run_id=RUN_ID,
        policy_sha256=loaded.sha256,
        inputs=inputs,
        staging_dir=STAGING_DIR,
        timeout_s=policy.limits.timeout_s,
        owner=Owner(pid=0, start_time=0.0, host=LABEL_PLACEHOLDERS[LABEL_OWNER_HOST]),
        deadline=0.0,
        stdout_pipe=STDOUT_PIPE,
    )
    kwargs = spec.create_kwargs()
    labels = dict(kwargs["labels"])
    labels.update({key: value for key, value in LABEL_PLACEHOLDERS.items() if key in labels})
    kwargs["labels"] = labels
    return kwargs


def assess(loaded: LoadedPolicy, found: list[Relaxation], findings: list[Finding]) -> Risk:
    """The risk of one tool, with the reasons a reviewer should read."""
    policy = loaded.policy
    reasons: list[RiskReason] = []
    if findings:
        rules = ", ".join(sorted({f.rule for f in findings}))
        reasons.append(RiskReason("high", f"fails `policy check` ({len(findings)}: {rules})"))
    if policy.network != "none":
        text = f"network `{policy.network}`: the tool can open connections (exfiltration)"
        reasons.append(RiskReason("high", text))
    if policy.inputs.max > 0:
        roots = ", ".join(f"`{root}`" for root in policy.inputs.allowed_roots) or "no root"
        text = f"reads up to {policy.inputs.max} host path(s), read-only, under {roots}"
        reasons.append(RiskReason("medium", text))
    open_schema = [r.field for r in found if r.rule == "SBX007"]
    if open_schema:
        text = f"`args_schema` lets unbounded input through at {', '.join(open_schema)}"
        reasons.append(RiskReason("medium", text))
    above = [
        f"{r.field} {r.value} (strict {r.strict})"
        for r in found
        if r.rule == "SBX011" and not r.field.startswith("inputs.")
    ]
    if above:
        reasons.append(
            RiskReason("low", f"resources above the strict defaults: {'; '.join(above)}")
        )
    if policy.runtime == "runc":
        text = "runtime `runc` shares the host kernel; `runsc` (gVisor) would add a boundary"
        reasons.append(RiskReason("low", text))
    ordered = tuple(sorted(reasons, key=lambda r: -_RANK[r.level]))
    level = ordered[0].level if ordered else "low"
    return Risk(level=level, reasons=ordered)


def entry_of(subject: Subject) -> AuditEntry:
    loaded = subject.loaded
    policy = loaded.policy
    found = relaxations(policy, subject.baseline)
    findings = check_policy(subject)
    roots = zip(policy.inputs.allowed_roots, loaded.allowed_roots, strict=True)
    return AuditEntry(
        tool=policy.tool,
        file=loaded.path.name,
        sha256=loaded.sha256,
        description=policy.description,
        image=policy.image.name,
        image_id=policy.image.id,
        command=tuple(policy.command),
        timeout_s=policy.limits.timeout_s,
        input_roots=tuple((written, str(resolved)) for written, resolved in roots),
        relaxations=tuple(found),
        findings=tuple(findings),
        risk=assess(loaded, found, findings),
        create_kwargs=effective_kwargs(loaded),
    )


def audit_set(policy_set: PolicySet, host: Host) -> AuditReport:
    """The audit of every tool of a policy set, sorted by tool name."""
    baseline, label, unparsed = baseline_of(policy_set)
    entries = []
    for source in policy_set.policies:
        subject = subject_of(source, baseline, host)
        if isinstance(subject, Finding):
            unparsed.append(subject)
        else:
            entries.append(entry_of(subject))
    return AuditReport(
        source=policy_set.label,
        baseline=label,
        entries=tuple(sorted(entries, key=lambda e: e.tool)),
        unparsed=tuple(unparsed),
    )


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    data = asdict(entry)
    data["input_roots"] = [{"written": w, "resolved": r} for w, r in entry.input_roots]
    data["command"] = list(entry.command)
    for relax in data["relaxations"]:
        del relax["path"]
    return data


def report_json(report: AuditReport) -> dict[str, Any]:
    return {
        "source": report.source,
        "baseline": report.baseline,
        "tools": [entry_json(entry) for entry in report.entries],
        "unparsed": [asdict(finding) for finding in report.unparsed],
    }
