"""``sandbox doctor``: is this host fit to run sandboxed tools? Facts are gathered once
(``gather``: engine, policies and images, host memory and disk, audit log, distribution
changelogs); ``evaluate`` turns them into checks and is pure, so every verdict is unit-tested.

Each failed check carries the command that fixes it. ``warn`` never makes the host unhealthy;
``fail`` does.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from . import hostcheck
from .audit import AuditLog, verify
from .docker_runtime import ENGINE_FIX, RUNSC_FIX
from .engine import MIN_API
from .errors import SandboxError
from .policy import LoadedPolicy, load_policy_dir
from .runtime import ContainerRuntime, EngineInfo

CheckStatus = Literal["ok", "warn", "fail"]
DISK_WARN_MB = 2048
DISK_FAIL_MB = 256
# Debian/Ubuntu record backported CVE fixes in these changelogs; a listed CVE counts as fixed.
CHANGELOGS = {
    "runc": ("runc",),
    "engine": ("docker.io", "moby-engine"),
}


@dataclass(frozen=True)
class Check:
    name: str
    status: CheckStatus
    detail: str
    fix: str | None = None


@dataclass(frozen=True)
class KnownEscape:
    """A container-escape (or isolation-bypass) CVE and the releases that fix it."""

    component: Literal["runc", "engine"]
    cve: str
    fixed_in: tuple[str, ...]
    severity: CheckStatus
    summary: str


# What we know; docs/security.md cites the same list. ``fixed_in`` is one release per line.
KNOWN_ESCAPES: tuple[KnownEscape, ...] = (
    KnownEscape(
        "runc",
        "CVE-2019-5736",
        ("1.0.0-rc7",),
        "fail",
        "a container process could overwrite the host's runc binary and run as root on the host",
    ),
    KnownEscape(
        "runc",
        "CVE-2024-21626",
        ("1.1.12",),
        "fail",
        "'Leaky Vessels': a leaked host file descriptor let a container's working directory "
        "reach the host filesystem",
    ),
    KnownEscape(
        "runc",
        "CVE-2025-31133",
        ("1.2.8", "1.3.3", "1.4.0"),
        "warn",
        "maskedPaths /dev/null race lets a malicious image or mount configuration write to "
        "host procfs files; needs attacker-controlled image or mounts (policies pin images)",
    ),
    KnownEscape(
        "runc",
        "CVE-2025-52565",
        ("1.2.8", "1.3.3", "1.4.0"),
        "warn",
        "/dev/console bind-mount race with the same preconditions as CVE-2025-31133",
    ),
    KnownEscape(
        "runc",
        "CVE-2025-52881",
        ("1.2.8", "1.3.3", "1.4.0"),
        "warn",
        "procfs write redirection via shared mounts, same preconditions as CVE-2025-31133",
    ),
    KnownEscape(
        "engine",
        "CVE-2024-41110",
        ("23.0.15", "25.0.6", "26.1.5", "27.1.1"),
        "warn",
        "AuthZ plugin bypass with a crafted API request; matters only where authorization "
        "plugins guard the engine",
    ),
)


@dataclass(frozen=True)
class ImageFact:
    tool: str
    image: str
    pinned_id: str
    problem: str | None


@dataclass(frozen=True)
class Facts:
    """Everything ``evaluate`` looks at, gathered by ``gather`` (or built by a test)."""

    engine: EngineInfo | None
    engine_error: str | None
    policy_error: str | None = None
    policy_fix: str | None = None
    images: tuple[ImageFact, ...] = ()
    runtimes_needed: frozenset[str] = frozenset()
    max_memory_mb: int = 0
    host: hostcheck.HostSnapshot | None = None
    reserve_mb: int = hostcheck.DEFAULT_RESERVE_MB
    free_disk_mb: tuple[tuple[str, int], ...] = ()
    audit_path: str = ""
    audit_error: str | None = None
    audit_problems: tuple[str, ...] = ()
    distro_fixed: dict[str, frozenset[str]] = field(default_factory=dict)


# --- versions ---------------------------------------------------------------------------------

_RELEASE = 10**6


def parse_version(text: str) -> tuple[int, int, int, int] | None:
    """``1.1.5+ds1`` -> (1, 1, 5, big); ``1.0.0-rc7`` -> (1, 0, 0, 7): rcs sort first."""
    match = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?(?:-rc\.?(\d+))?", text.strip())
    if match is None:
        return None
    major, minor, patch, rc = match.groups()
    return (int(major), int(minor), int(patch or 0), int(rc) if rc else _RELEASE)


def is_fixed(version: tuple[int, int, int, int], fixed_in: Iterable[str]) -> bool:
    """Fixed if the version's own release line has a fix at or below it, or it is newer than
    every fixed release."""
    fixes = [v for v in (parse_version(f) for f in fixed_in) if v is not None]
    if not fixes:
        return False
    same_line = [f for f in fixes if f[:2] == version[:2]]
    if same_line and version >= min(same_line):
        return True
    return version >= max(fixes)


# --- evaluation (pure) ------------------------------------------------------------------------


def evaluate(facts: Facts) -> list[Check]:
    checks = [_engine_check(facts)]
    if facts.engine is not None:
        checks.append(_api_check(facts.engine))
        checks.extend(_runtime_checks(facts.engine, facts.runtimes_needed))
        checks.append(_cgroup_check(facts.engine))
        checks.extend(_escape_checks(facts.engine, facts.distro_fixed))
    checks.extend(_image_checks(facts))
    checks.extend(_memory_checks(facts))
    checks.extend(_disk_checks(facts))
    checks.extend(_audit_checks(facts))
    return checks


def healthy(checks: Iterable[Check]) -> bool:
    return all(c.status != "fail" for c in checks)


def _engine_check(facts: Facts) -> Check:
    if facts.engine is None:
        # The error already says what failed ("Docker engine unreachable while trying to …").
        detail = facts.engine_error or "Docker engine unreachable"
        return Check("engine", "fail", detail, ENGINE_FIX)
    info = facts.engine
    return Check("engine", "ok", f"Docker {info.version} answers (API {info.api_version})")


def _api_check(info: EngineInfo) -> Check:
    parsed = parse_version(info.api_version)
    if parsed is None or parsed[:2] < MIN_API:
        return Check(
            "api_version",
            "fail",
            f"engine API {info.api_version} is older than {MIN_API[0]}.{MIN_API[1]}",
            "upgrade the Docker engine (Debian bookworm's docker.io or newer)",
        )
    return Check("api_version", "ok", f"API {info.api_version} >= {MIN_API[0]}.{MIN_API[1]}")


def _runtime_checks(info: EngineInfo, needed: frozenset[str]) -> list[Check]:
    checks = []
    if "runc" in info.runtimes:
        checks.append(Check("runtime_runc", "ok", "runc is registered"))
    else:
        checks.append(
            Check("runtime_runc", "fail", "runc is not registered", "apt-get install runc")
        )
    args = dict(info.runtime_args).get("runsc")
    if args is None:
        severity: CheckStatus = "fail" if "runsc" in needed else "warn"
        used = "a policy uses it" if "runsc" in needed else "no policy uses it yet"
        checks.append(
            Check("runtime_runsc", severity, f"runsc is not registered ({used})", RUNSC_FIX)
        )
    elif "--oci-seccomp" not in args:
        checks.append(
            Check(
                "runtime_runsc",
                "fail",
                "runsc is registered without --oci-seccomp: the seccomp profile would not apply "
                "inside gVisor",
                RUNSC_FIX,
            )
        )
    else:
        checks.append(Check("runtime_runsc", "ok", f"runsc registered with {' '.join(args)}"))
    return checks


def _cgroup_check(info: EngineInfo) -> Check:
    if info.cgroup_version in ("1", "2"):
        return Check("cgroup", "ok", f"cgroup v{info.cgroup_version}")
    return Check("cgroup", "warn", f"cgroup version unknown ({info.cgroup_version})")


def _component_version(info: EngineInfo, component: str) -> str | None:
    if component == "engine":
        return info.version
    return dict(info.components).get(component)


def _escape_checks(info: EngineInfo, distro_fixed: dict[str, frozenset[str]]) -> list[Check]:
    checks = []
    for known in KNOWN_ESCAPES:
        name = f"{known.component}_{known.cve}"
        raw = _component_version(info, known.component)
        parsed = parse_version(raw) if raw else None
        fixes = ", ".join(known.fixed_in)
        if parsed is None:
            checks.append(
                Check(
                    name, "warn", f"{known.component} version unknown; {known.cve} fixed in {fixes}"
                )
            )
        elif is_fixed(parsed, known.fixed_in):
            checks.append(Check(name, "ok", f"{known.component} {raw} has the {known.cve} fix"))
        elif known.cve in distro_fixed.get(known.component, frozenset()):
            checks.append(
                Check(
                    name,
                    "ok",
                    f"{known.component} {raw} is older than {fixes}, but the distribution's "
                    f"changelog lists the {known.cve} fix (backport)",
                )
            )
        else:
            package = "runc" if known.component == "runc" else "docker.io"
            checks.append(
                Check(
                    name,
                    known.severity,
                    f"{known.component} {raw} lacks the fix for {known.cve} ({known.summary}); "
                    f"fixed in {fixes}",
                    f"apt-get update && apt-get install --only-upgrade {package}   "
                    "(or run tools under runtime: runsc)",
                )
            )
    return checks


def _image_fix(image: str) -> str:
    name = image.split("/", 1)[-1].split(":", 1)[0]
    return (
        f"sandbox images build {name}   (then, after review, `sandbox images lock` "
        "to pin the id you built)"
    )


def _image_checks(facts: Facts) -> list[Check]:
    if facts.policy_error is not None:
        fix = facts.policy_fix or "sandbox policy check   (and fix the file)"
        return [Check("policies", "fail", facts.policy_error, fix)]
    if facts.engine is None:  # gather() asks the engine about no image without one
        return [Check("images", "warn", "pinned images not checked: the engine is unreachable")]
    checks = []
    for image in facts.images:
        name = f"image_{image.tool}"
        if image.problem is None:
            detail = f"{image.image} present with the pinned id {image.pinned_id[:19]}…"
            checks.append(Check(name, "ok", detail))
        else:
            checks.append(Check(name, "fail", image.problem, _image_fix(image.image)))
    if not facts.images:
        checks.append(Check("policies", "warn", "no tool policies found"))
    return checks


def _memory_checks(facts: Facts) -> list[Check]:
    host = facts.host
    if host is None:
        return []
    fits_total = host.total_memory_mb - facts.reserve_mb
    fits_now = host.available_memory_mb - facts.reserve_mb
    detail = (
        f"{host.available_memory_mb} MiB available of {host.total_memory_mb} MiB "
        f"(reserve {facts.reserve_mb} MiB); largest policy limit {facts.max_memory_mb} MiB"
    )
    if facts.max_memory_mb > fits_total:
        fix = "lower limits.memory_mb in the largest policy, or add memory to the host"
        return [Check("memory", "fail", detail + ": it can never be admitted", fix)]
    if facts.max_memory_mb > fits_now:
        return [Check("memory", "warn", detail + ": runs of it would wait for memory now")]
    return [Check("memory", "ok", detail)]


def _disk_checks(facts: Facts) -> list[Check]:
    checks = []
    for where, free in facts.free_disk_mb:
        detail = f"{free} MiB free at {where}"
        fix = f"free space on the filesystem of {where} (e.g. `docker system prune`)"
        if free < DISK_FAIL_MB:
            checks.append(Check(f"disk {where}", "fail", detail, fix))
        elif free < DISK_WARN_MB:
            checks.append(Check(f"disk {where}", "warn", detail, fix))
        else:
            checks.append(Check(f"disk {where}", "ok", detail))
    return checks


def _audit_checks(facts: Facts) -> list[Check]:
    if facts.audit_error is not None:
        fix = (
            f"mkdir -p {Path(facts.audit_path).parent} && chmod 700 "
            f"{Path(facts.audit_path).parent}   (or set SANDBOX_AUDIT_LOG / --audit-log)"
        )
        return [Check("audit_log", "fail", facts.audit_error, fix)]
    checks = [Check("audit_log", "ok", f"{facts.audit_path} is writable")]
    if facts.audit_problems:
        checks.append(
            Check(
                "audit_chain",
                "fail",
                f"{len(facts.audit_problems)} problem(s), first: {facts.audit_problems[0]}",
                f"sandbox audit verify --file {facts.audit_path}   (investigate; then move the "
                "log aside to start a new chain)",
            )
        )
    else:
        checks.append(Check("audit_chain", "ok", "hash chain intact"))
    return checks


# --- gathering (I/O) --------------------------------------------------------------------------


def changelog_cves(
    packages: Iterable[str], doc_root: Path = Path("/usr/share/doc")
) -> frozenset[str]:
    """CVE ids named in the Debian changelogs of ``packages`` (backported fixes)."""
    found: set[str] = set()
    for package in packages:
        path = doc_root / package / "changelog.Debian.gz"
        try:
            with gzip.open(path, "rt", errors="replace") as fh:
                found.update(re.findall(r"CVE-\d{4}-\d{4,}", fh.read()))
        except OSError:
            continue
    return frozenset(found)


def _images(runtime: ContainerRuntime, policies: dict[str, LoadedPolicy]) -> tuple[ImageFact, ...]:
    facts = []
    for tool, loaded in sorted(policies.items()):
        image = loaded.policy.image
        problem = None
        try:
            runtime.check_image(image.name, image.id)
        except SandboxError as exc:
            problem = exc.message
        facts.append(ImageFact(tool, image.name, image.id, problem))
    return tuple(facts)


def gather(runtime: ContainerRuntime, policy_dir: Path, audit: AuditLog) -> Facts:
    engine: EngineInfo | None = None
    engine_error = None
    try:
        engine = runtime.info()
    except SandboxError as exc:
        engine_error = exc.message
    policy_error = policy_fix = None
    policies: dict[str, LoadedPolicy] = {}
    try:
        policies = load_policy_dir(policy_dir)
    except SandboxError as exc:
        policy_error, policy_fix = exc.message, exc.fix
    images = _images(runtime, policies) if engine is not None else ()
    audit_error = None
    problems: tuple[str, ...] = ()
    try:
        audit.check()
        result = verify(audit.path)
        if audit.path.stat().st_size > 0:
            problems = tuple(f"line {p.line}: {p.message}" for p in result.problems)
    except SandboxError as exc:
        audit_error = exc.message
    except OSError as exc:
        audit_error = f"{audit.path}: {exc.strerror}"
    disks = [("/tmp", hostcheck.free_disk_mb("/tmp"))]  # noqa: S108 - where staging often lives
    if engine is not None and engine.root_dir and Path(engine.root_dir).exists():
        disks.append((engine.root_dir, hostcheck.free_disk_mb(engine.root_dir)))
    if audit.path.parent.exists():
        disks.append((str(audit.path.parent), hostcheck.free_disk_mb(str(audit.path.parent))))
    return Facts(
        engine=engine,
        engine_error=engine_error,
        policy_error=policy_error,
        policy_fix=policy_fix,
        images=images,
        runtimes_needed=frozenset(lp.policy.runtime for lp in policies.values()),
        max_memory_mb=max((lp.policy.limits.memory_mb for lp in policies.values()), default=0),
        host=hostcheck.snapshot(),
        free_disk_mb=tuple(dict(disks).items()),
        audit_path=str(audit.path),
        audit_error=audit_error,
        audit_problems=problems,
        distro_fixed={component: changelog_cves(pkgs) for component, pkgs in CHANGELOGS.items()},
    )
