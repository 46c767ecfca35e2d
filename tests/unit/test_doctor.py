"""``sandbox doctor``'s verdicts, from hand-made facts: every failed check names its fix, a
warning never makes the host unhealthy, and CVE fixes are judged by release line or backport."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sandbox.doctor import (
    Check,
    Facts,
    ImageFact,
    evaluate,
    healthy,
    is_fixed,
    parse_version,
)
from sandbox.hostcheck import HostSnapshot
from sandbox.runtime import EngineInfo

ENGINE = EngineInfo(
    version="27.3.1",
    api_version="1.47",
    runtimes=("runc", "runsc"),
    cgroup_version="2",
    components=(("Engine", "27.3.1"), ("runc", "1.2.8")),
    runtime_args=(("runc", ()), ("runsc", ("--network=none", "--oci-seccomp"))),
    root_dir="/var/lib/docker",
)
GOOD = Facts(
    engine=ENGINE,
    engine_error=None,
    images=(ImageFact("testkit", "sandbox/testkit", "sha256:" + "a" * 64, None),),
    runtimes_needed=frozenset({"runc"}),
    max_memory_mb=1024,
    host=HostSnapshot(available_memory_mb=8000, total_memory_mb=16000, cpu_count=2),
    free_disk_mb=(("/tmp", 50000),),
    audit_path="/state/audit.jsonl",
)


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def test_a_good_host_is_healthy() -> None:
    checks = evaluate(GOOD)
    assert healthy(checks), [c for c in checks if c.status != "ok"]


def test_every_failed_check_names_a_fix() -> None:
    bad = replace(
        GOOD,
        engine=replace(
            ENGINE,
            api_version="1.30",
            runtimes=(),
            runtime_args=(),
            components=(("runc", "1.1.5"),),
            version="20.10.24",
        ),
        runtimes_needed=frozenset({"runc", "runsc"}),
        images=(ImageFact("dbt", "sandbox/dbt", "sha256:" + "b" * 64, "image missing"),),
        max_memory_mb=20000,
        free_disk_mb=(("/tmp", 100),),
        audit_error="cannot write",
    )
    checks = evaluate(bad)
    failed = [c for c in checks if c.status == "fail"]
    assert not healthy(checks)
    assert {c.name for c in failed} >= {
        "api_version",
        "runtime_runc",
        "runtime_runsc",
        "image_dbt",
        "memory",
        "disk /tmp",
        "audit_log",
        "runc_CVE-2024-21626",
    }
    assert all(c.fix for c in failed)
    assert "sandbox images build dbt" in by_name(checks)["image_dbt"].fix  # type: ignore[operator]


def test_unreachable_engine_fails_with_the_start_command() -> None:
    error = "Docker engine unreachable while trying to read the engine's version: refused"
    checks = evaluate(replace(GOOD, engine=None, engine_error=error))
    engine = by_name(checks)["engine"]
    assert engine.status == "fail"
    assert "engine.sh" in (engine.fix or "")
    assert engine.detail == error  # said once, not "unreachable: Docker engine unreachable …"


def test_runsc_without_oci_seccomp_fails() -> None:
    engine = replace(ENGINE, runtime_args=(("runc", ()), ("runsc", ("--network=none",))))
    check = by_name(evaluate(replace(GOOD, engine=engine)))["runtime_runsc"]
    assert check.status == "fail"


def test_runsc_missing_only_warns_when_no_policy_needs_it() -> None:
    engine = replace(ENGINE, runtimes=("runc",), runtime_args=(("runc", ()),))
    checks = evaluate(replace(GOOD, engine=engine))
    assert by_name(checks)["runtime_runsc"].status == "warn"
    assert healthy(checks)


def test_leaky_vessels_backport_in_the_distro_changelog_counts_as_fixed() -> None:
    engine = replace(ENGINE, components=(("runc", "1.1.5+ds1"),))
    unpatched = by_name(evaluate(replace(GOOD, engine=engine)))["runc_CVE-2024-21626"]
    assert unpatched.status == "fail"
    patched = by_name(
        evaluate(replace(GOOD, engine=engine, distro_fixed={"runc": frozenset({"CVE-2024-21626"})}))
    )["runc_CVE-2024-21626"]
    assert patched.status == "ok"
    assert "backport" in patched.detail


def test_tampered_audit_chain_is_unhealthy() -> None:
    checks = evaluate(replace(GOOD, audit_problems=("line 3: prev does not match",)))
    assert by_name(checks)["audit_chain"].status == "fail"


@pytest.mark.parametrize(
    ("version", "fixed_in", "expected"),
    [
        ("1.1.12", ("1.1.12",), True),
        ("1.1.11", ("1.1.12",), False),
        ("1.2.0", ("1.1.12",), True),
        ("1.0.0-rc6", ("1.0.0-rc7",), False),
        ("1.0.0-rc93", ("1.0.0-rc7",), True),
        ("1.1.5+ds1", ("1.2.8", "1.3.3", "1.4.0"), False),
        ("1.2.8", ("1.2.8", "1.3.3", "1.4.0"), True),
        ("1.3.2", ("1.2.8", "1.3.3", "1.4.0"), False),
        ("1.5.0", ("1.2.8", "1.3.3", "1.4.0"), True),
        ("26.1.5", ("23.0.15", "25.0.6", "26.1.5", "27.1.1"), True),
        ("26.0.2", ("23.0.15", "25.0.6", "26.1.5", "27.1.1"), False),
    ],
)
def test_fix_judged_by_release_line(
    version: str, fixed_in: tuple[str, ...], expected: bool
) -> None:
    parsed = parse_version(version)
    assert parsed is not None
    assert is_fixed(parsed, fixed_in) is expected


def test_an_unreachable_engine_does_not_claim_there_are_no_policies() -> None:
    # gather() checks no image without an engine; doctor then said "no tool policies found"
    # of a directory full of them, sending the user after the wrong problem.
    checks = evaluate(replace(GOOD, engine=None, engine_error="connection refused", images=()))
    assert not any("no tool policies" in c.detail for c in checks)
    images = by_name(checks)["images"]
    assert images.status == "warn"
    assert "engine is unreachable" in images.detail


def test_a_missing_policy_directory_gets_its_own_fix() -> None:
    # The fix said "sandbox policy check (and fix the file)": there is no file to fix.
    checks = evaluate(
        replace(GOOD, images=(), policy_error="policies: not found", policy_fix="pass --policies")
    )
    assert by_name(checks)["policies"].fix == "pass --policies"
