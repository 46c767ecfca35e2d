"""The baseline rules of ``sandbox policy check``: one parsed policy in, findings out.

Each rule is a small function of a ``Subject`` (the policy, where its keys are written, the
baseline, the host view for input roots). Only SBX008 looks at the filesystem (``roots``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..policy import LoadedPolicy
from .baseline import BOUNDED_FIELDS, Baseline
from .catalog import Finding
from .locate import KeyLines, KeyPath, dotted
from .relax import (
    MIN_JUSTIFICATION_CHARS,
    bounded_value,
    number,
    relaxations,
    stale_justifications,
    thin_justifications,
)
from .roots import Host, root_problems
from .secrets import name_reason, value_reason

# All-zero (or one repeated digit) ids are placeholders written before `sandbox images lock`.
_PLACEHOLDER_ID = re.compile(r"^sha256:(.)\1{63}$")


@dataclass(frozen=True)
class Subject:
    """What the rules look at for one policy file."""

    loaded: LoadedPolicy
    lines: KeyLines
    baseline: Baseline
    host: Host

    def finding(self, rule: str, path: KeyPath, message: str) -> Finding:
        return Finding(
            rule=rule,
            path=str(self.loaded.path),
            line=self.lines.line(path),
            message=message,
            key=dotted(path) or None,
        )


def _user(subject: Subject) -> list[Finding]:
    # uid 0 and gid 0 are refused by the format itself (a parse finding under this rule).
    uid, _, gid = subject.loaded.policy.user.partition(":")
    minimum = subject.baseline.min_uid
    if not gid:
        message = f"user {uid!r} has no gid: Docker then takes the image's group for the uid, "
        message += 'root (0) when the image has no passwd entry; write "uid:gid"'
    elif int(uid) < minimum:
        message = f"uid {uid} is below the baseline's min_uid {minimum} (system accounts)"
    else:
        return []
    return [subject.finding("SBX002", ("user",), message)]


def _limits_explicit(subject: Subject) -> list[Finding]:
    missing = [
        name for name in subject.baseline.required_limits if not subject.lines.has(("limits", name))
    ]
    if not missing:
        return []
    where = ("limits",)
    message = f"limits not written in the policy (defaults would apply): {', '.join(missing)}"
    return [subject.finding("SBX004", where, message)]


def _ceilings(subject: Subject) -> list[Finding]:
    findings = []
    for field in BOUNDED_FIELDS:
        value = bounded_value(subject.loaded.policy, field)
        ceiling = subject.baseline.ceiling(field)
        if value > ceiling:
            message = f"{field} {number(value)} is above the baseline ceiling {number(ceiling)}"
            findings.append(subject.finding("SBX005", tuple(field.split(".")), message))
    return findings


def _image(subject: Subject) -> list[Finding]:
    image_id = subject.loaded.policy.image.id
    if not _PLACEHOLDER_ID.match(image_id):
        return []
    message = "image id is a placeholder, not a pin: run `sandbox images lock`"
    return [subject.finding("SBX006", ("image", "id"), message)]


def _runtime(subject: Subject) -> list[Finding]:
    runtime = subject.loaded.policy.runtime
    allowed = subject.baseline.runtimes
    if runtime in allowed:
        return []
    message = f"runtime {runtime!r} is not allowed by the baseline ({', '.join(allowed)})"
    return [subject.finding("SBX010", ("runtime",), message)]


def _env(subject: Subject) -> list[Finding]:
    findings = []
    for name, value in subject.loaded.policy.env.items():
        reasons = [r for r in (name_reason(name), value_reason(value)) if r is not None]
        if reasons:
            message = f"env {name} looks like a secret: {'; '.join(reasons)}"
            findings.append(subject.finding("SBX009", ("env", name), message))
    return findings


def _roots(subject: Subject) -> list[Finding]:
    findings = []
    written = subject.loaded.policy.inputs.allowed_roots
    base = subject.loaded.path.parent
    for index, (text, root) in enumerate(zip(written, subject.loaded.allowed_roots, strict=True)):
        for problem in root_problems(root, subject.host, base / Path(text).expanduser()):
            shown = text if text == str(root) else f"{text} ({root})"
            message = f"input root {shown} {problem}"
            findings.append(subject.finding("SBX008", ("inputs", "allowed_roots", index), message))
    return findings


def _relaxations(subject: Subject) -> list[Finding]:
    findings = []
    for relax in relaxations(subject.loaded.policy, subject.baseline):
        if relax.justification is not None:
            continue
        if relax.rule == "SBX007":
            message = f"{relax.field}: {relax.value}; close it or justify it under {relax.field!r}"
        else:
            message = (
                f"{relax.field} is {relax.value} (strict: {relax.strict}) without a "
                f"justification; add one under {relax.field!r}"
            )
        findings.append(subject.finding(relax.rule, relax.path, message))
    return findings


def _justifications(subject: Subject) -> list[Finding]:
    policy = subject.loaded.policy
    stale = stale_justifications(policy, relaxations(policy, subject.baseline))
    findings = [
        subject.finding(
            "SBX012",
            ("justification", key),
            f"justification {key!r} justifies nothing: the policy relaxes no such field",
        )
        for key in stale
    ]
    findings += [
        subject.finding(
            "SBX012",
            ("justification", key),
            f"justification {key!r} is too short to be a reason "
            f"(at least {MIN_JUSTIFICATION_CHARS} characters)",
        )
        for key in thin_justifications(policy)
        if key not in stale
    ]
    return findings


RULE_FUNCTIONS: tuple[Callable[[Subject], list[Finding]], ...] = (
    _user,
    _limits_explicit,
    _ceilings,
    _image,
    _runtime,
    _env,
    _roots,
    _relaxations,
    _justifications,
)


def check_policy(subject: Subject) -> list[Finding]:
    """Every baseline rule on one parsed policy."""
    return [finding for rule in RULE_FUNCTIONS for finding in rule(subject)]
