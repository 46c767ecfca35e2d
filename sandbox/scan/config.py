"""Image configuration checks (``docker inspect``'s ``Config``): a non-root default user, no
exposed ports, no secrets in the environment or labels, and an entrypoint/command layout that
runs exactly the argv the policies review.

Pure: the inspect dict, the policies' commands and the filesystem snapshot in, findings out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..spec import LAUNCHER
from .model import CheckResult, Finding, Severity
from .tarfs import FsSnapshot, resolve

CHECK = "config"
# The coordinator wraps every policy command in the launcher and `timeout -s KILL`
# (spec.wrapped_command): `python3 -I -S /opt/sandbox/lib/sandbox_launch.py -- timeout …`.
WRAPPER = "timeout"
_SECRET_NAME_RE = re.compile(
    r"(?i)(pass(word|wd)?|secret|token|api[-_]?key|private[-_]?key|access[-_]?key|credential)"
)
_SECRET_VALUE_RES = (
    re.compile(r"AKIA[0-9A-Z]{16}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}"),
    re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}"),
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    re.compile(r"\bnpm_[A-Za-z0-9]{36}\b"),
    re.compile(r"://[^/\s:@]+:[^/\s@]+@"),
)


@dataclass(frozen=True)
class PolicyCommand:
    """What one policy will run in this image."""

    tool: str
    command: tuple[str, ...]
    env: Mapping[str, str]


def _finding(rule: str, severity: Severity, message: str, **props: Any) -> Finding:
    return Finding(rule_id=rule, check=CHECK, severity=severity, message=message, properties=props)


def user_findings(config: Mapping[str, Any]) -> list[Finding]:
    user = str(config.get("User") or "")
    name = user.split(":", 1)[0]
    if name in ("", "0", "root"):
        shown = user or "(unset: root)"
        return [
            _finding(
                "config.root-user",
                Severity.HIGH,
                f"the image's default user is root ({shown}); set a numeric non-root USER",
                user=user,
            )
        ]
    return []


def port_findings(config: Mapping[str, Any]) -> list[Finding]:
    ports = sorted((config.get("ExposedPorts") or {}).keys())
    if not ports:
        return []
    return [
        _finding(
            "config.exposed-ports",
            Severity.MEDIUM,
            f"the image exposes {', '.join(ports)}; tools run without a network",
            ports=ports,
        )
    ]


def _looks_secret(name: str, value: str) -> bool:
    if value and _SECRET_NAME_RE.search(name):
        return True
    return any(p.search(value) for p in _SECRET_VALUE_RES)


def secret_findings(config: Mapping[str, Any]) -> list[Finding]:
    pairs: list[tuple[str, str, str]] = []
    for item in config.get("Env") or []:
        name, _, value = str(item).partition("=")
        pairs.append(("env", name, value))
    pairs += [("label", k, str(v)) for k, v in (config.get("Labels") or {}).items()]
    # The value is never echoed: the report itself must not leak what it found.
    return [
        _finding(
            "config.secret",
            Severity.CRITICAL,
            f"{where} {name} looks like a secret (value redacted); images are readable by "
            "anyone who can pull them",
            where=where,
            name=name,
        )
        for where, name, value in pairs
        if _looks_secret(name, value)
    ]


def _image_path_var(config: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    if "PATH" in env:
        return env["PATH"].split(":")
    for item in config.get("Env") or []:
        name, _, value = str(item).partition("=")
        if name == "PATH":
            return value.split(":")
    return ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]


def _which(snapshot: FsSnapshot, program: str, path_var: Sequence[str]) -> str | None:
    candidates = [program] if program.startswith("/") else [f"{d}/{program}" for d in path_var]
    for candidate in candidates:
        real = resolve(snapshot, candidate)
        entry = snapshot.entries.get(real) if real else None
        if entry is not None and entry.mode & 0o111:
            return real
    return None


def command_findings(
    config: Mapping[str, Any], policies: Sequence[PolicyCommand], snapshot: FsSnapshot
) -> list[Finding]:
    findings: list[Finding] = []
    entrypoint = config.get("Entrypoint") or []
    if policies and entrypoint:
        findings.append(
            _finding(
                "config.entrypoint",
                Severity.HIGH,
                f"ENTRYPOINT {entrypoint} would run in front of the policy's command, so the "
                "reviewed argv is not what runs; remove it",
                entrypoint=entrypoint,
            )
        )
    for policy in policies:
        findings += _missing_programs(config, policy, snapshot)
    return findings


def _missing_programs(
    config: Mapping[str, Any], policy: PolicyCommand, snapshot: FsSnapshot
) -> list[Finding]:
    path_var = _image_path_var(config, policy.env)
    wanted = dict.fromkeys([LAUNCHER[0], WRAPPER, policy.command[0]])
    missing = [p for p in wanted if _which(snapshot, p, path_var) is None]
    # Absolute arguments (the launcher's script, the tool script) must exist too, or every run
    # fails at start.
    arguments = (*LAUNCHER[1:], *policy.command[1:])
    missing += [a for a in arguments if a.startswith("/") and resolve(snapshot, a) is None]
    return [
        _finding(
            "config.command-missing",
            Severity.HIGH,
            f"policy {policy.tool} runs {list(policy.command)} under the coordinator's launcher "
            f"({' '.join(LAUNCHER[:4])}, from sandbox/base) and `{WRAPPER}`, but {program} is "
            "not in the image (or not executable)",
            tool=policy.tool,
            program=program,
        )
        for program in missing
    ]


def check_config(
    config: Mapping[str, Any], policies: Sequence[PolicyCommand], snapshot: FsSnapshot
) -> tuple[CheckResult, list[Finding]]:
    findings = [
        *user_findings(config),
        *port_findings(config),
        *secret_findings(config),
        *command_findings(config, policies, snapshot),
    ]
    what = "user, ports, env/labels for secrets"
    if policies:
        what += f", entrypoint and command of {', '.join(p.tool for p in policies)}"
    else:
        what += " (no policy runs this image: command not checked)"
    status = "findings" if findings else "passed"
    return CheckResult(name=CHECK, status=status, summary=what, checked=1), findings
