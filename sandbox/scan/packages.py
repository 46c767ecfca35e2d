"""Python package checks: each virtualenv's installed set equals its lock file (no drift), and
every installed distribution's requirements are satisfied (what ``pip check`` reports), both
computed from metadata read out of the image, so no code from the image runs (and images whose
pip was removed can still be checked).

Pure: inventory and lock texts in, findings out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from .inventory import SYSTEM, Dist, Inventory, PythonEnv
from .lockfile import Locked
from .model import CheckResult, Finding, Location, Severity

CHECK = "packages"
MAIN_LOCK = "requirements.lock"
# Installed by `python -m venv` itself, not by the lock; reported, but below the default bar.
SEED_PACKAGES = frozenset({"pip", "setuptools", "wheel"})
_MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}


@dataclass(frozen=True)
class LockFile:
    """A lock file of the image's source directory."""

    name: str
    """File name, e.g. ``requirements.lock`` or ``source-faker.lock``."""
    repo_path: str
    """Path for reports (repository-relative when possible)."""
    pins: Mapping[str, Locked]
    """Canonical name -> pin."""


def marker_env(env: PythonEnv, architecture: str) -> dict[str, str]:
    """The marker environment of a CPython on Linux in the image (never the host's)."""
    full = env.python_version or "3.11.0"
    short = ".".join(full.split(".")[:2])
    return {
        "implementation_name": "cpython",
        "implementation_version": full,
        "os_name": "posix",
        "platform_machine": _MACHINES.get(architecture, architecture),
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": "Linux",
        "platform_version": "",
        "python_full_version": full,
        "python_version": short,
        "sys_platform": "linux",
        "extra": "",
    }


def _applies(marker: Marker | None, environment: dict[str, str]) -> bool:
    return marker is None or marker.evaluate(environment)


def match_locks(
    envs: list[PythonEnv], locks: list[LockFile]
) -> tuple[dict[str, LockFile], list[PythonEnv], list[LockFile]]:
    """Pair venvs with locks: ``NAME.lock`` goes with venv NAME; ``requirements.lock`` with the
    one venv left over. Returns (venv root -> lock, unlocked venvs, unused locks)."""
    venvs = [e for e in envs if e.root != SYSTEM]
    by_name = {lock.name.removesuffix(".lock"): lock for lock in locks}
    pairs = {e.root: by_name[e.name] for e in venvs if e.name in by_name}
    left = [e for e in venvs if e.root not in pairs]
    main = next((lock for lock in locks if lock.name == MAIN_LOCK), None)
    if main is not None and len(left) == 1 and main not in pairs.values():
        pairs[left[0].root] = main
        left = []
    used = {id(lock) for lock in pairs.values()}
    return pairs, left, [lock for lock in locks if id(lock) not in used]


def _drift(rule: str, severity: Severity, message: str, where: Location, **props: str) -> Finding:
    return Finding(
        rule_id=rule,
        check=CHECK,
        severity=severity,
        message=message,
        location=where,
        properties=props,
    )


def drift_findings(
    env: PythonEnv, dists: list[Dist], lock: LockFile, environment: dict[str, str]
) -> list[Finding]:
    installed = {d.key: d for d in dists}
    expected = {k: p for k, p in lock.pins.items() if _applies(p.marker, environment)}
    findings = []
    for key, pin in sorted(expected.items()):
        where = Location(repo_path=lock.repo_path, line=pin.line)
        dist = installed.get(key)
        if dist is None:
            findings.append(
                _drift(
                    "packages.drift-missing",
                    Severity.HIGH,
                    f"{pin.name}=={pin.version} is locked in {lock.name} but not installed in "
                    f"{env.root}",
                    where,
                    package=pin.name,
                    locked=pin.version,
                    venv=env.root,
                )
            )
        elif not _same_version(dist.version, pin.version):
            findings.append(
                _drift(
                    "packages.drift-version",
                    Severity.HIGH,
                    f"{dist.name} {dist.version} is installed in {env.root} but {lock.name} "
                    f"locks {pin.version}",
                    where,
                    package=dist.name,
                    installed=dist.version,
                    locked=pin.version,
                    venv=env.root,
                )
            )
    findings += _extras(env, installed, expected, lock)
    return findings


def _extras(
    env: PythonEnv, installed: dict[str, Dist], expected: Mapping[str, Locked], lock: LockFile
) -> list[Finding]:
    findings = []
    for key, dist in sorted(installed.items()):
        if key in expected:
            continue
        seed = key in SEED_PACKAGES
        hint = " (seeded by `python -m venv`; create it with --without-pip)" if seed else ""
        findings.append(
            _drift(
                "packages.drift-unlocked",
                Severity.MEDIUM if seed else Severity.HIGH,
                f"{dist.name} {dist.version} is installed in {env.root} but not in "
                f"{lock.name}{hint}",
                Location(repo_path=lock.repo_path, image_path=dist.path),
                package=dist.name,
                installed=dist.version,
                venv=env.root,
            )
        )
    return findings


def _same_version(installed: str, locked: str) -> bool:
    try:
        return Version(installed) == Version(locked)
    except InvalidVersion:
        return installed == locked


def requirement_findings(dists: list[Dist], environment: dict[str, str]) -> list[Finding]:
    """What ``pip check`` reports for one environment: missing and conflicting requirements."""
    installed = {d.key: d for d in dists}
    findings = []
    for dist in sorted(dists, key=lambda d: d.key):
        for line in dist.requires:
            problem = _unsatisfied(line, installed, environment)
            if problem:
                findings.append(
                    _drift(
                        "packages.pip-check",
                        Severity.HIGH,
                        f"{dist.name} {dist.version} {problem} (in {dist.env})",
                        Location(image_path=dist.path),
                        package=dist.name,
                        requirement=line,
                        venv=dist.env,
                    )
                )
    return findings


def _unsatisfied(line: str, installed: Mapping[str, Dist], environment: dict[str, str]) -> str:
    try:
        req = Requirement(line)
    except InvalidRequirement:
        return ""  # pip check ignores what it cannot parse too
    if not _applies(req.marker, environment):
        return ""
    dist = installed.get(canonicalize_name(req.name))
    if dist is None:
        return f"requires {req.name}, which is not installed"
    try:
        ok = req.specifier.contains(Version(dist.version), prereleases=True)
    except InvalidVersion:
        ok = True
    return "" if ok else f"has requirement {req}, but {dist.name} {dist.version} is installed"


def check_packages(
    inventory: Inventory, locks: list[LockFile], architecture: str, dockerfile: str | None
) -> tuple[CheckResult, list[Finding]]:
    pairs, unlocked, unused = match_locks(list(inventory.envs), locks)
    venvs = [e for e in inventory.envs if e.root != SYSTEM]
    if not venvs and not locks:
        count = len(inventory.dists)
        return CheckResult(
            name=CHECK,
            status="not_applicable",
            summary=f"no virtualenv and no lock file: drift and pip check not applicable "
            f"({count} system Python package(s) inventoried)",
        ), []
    findings: list[Finding] = []
    for env in venvs:
        environment = marker_env(env, architecture)
        dists = inventory.in_env(env.root)
        findings += requirement_findings(dists, environment)
        if env.root in pairs:
            findings += drift_findings(env, dists, pairs[env.root], environment)
    findings += _pairing_findings(unlocked, unused, dockerfile)
    checked = sum(len(inventory.in_env(e.root)) for e in venvs)
    summary = (
        f"{len(venvs)} virtualenv(s), {checked} package(s): lock drift against "
        f"{', '.join(sorted(lock.name for lock in pairs.values())) or 'no lock'}, "
        "requirements satisfied (pip check)"
    )
    status = "findings" if findings else "passed"
    return CheckResult(name=CHECK, status=status, summary=summary, checked=checked), findings


def _pairing_findings(
    unlocked: list[PythonEnv], unused: list[LockFile], dockerfile: str | None
) -> list[Finding]:
    findings = [
        _drift(
            "packages.unlocked-venv",
            Severity.MEDIUM,
            f"virtualenv {env.root} has no lock file ({env.name}.lock or {MAIN_LOCK}): its "
            "contents cannot be compared with a reviewed set",
            Location(repo_path=dockerfile, image_path=env.root),
            venv=env.root,
        )
        for env in unlocked
    ]
    findings += [
        _drift(
            "packages.lock-unused",
            Severity.HIGH,
            f"{lock.name} locks {len(lock.pins)} package(s) but no virtualenv in the image "
            "matches it",
            Location(repo_path=lock.repo_path, line=1),
            lock=lock.name,
        )
        for lock in unused
    ]
    return findings
