"""``sandbox policy check``: every rule fails its fixture (and only it), clean policies pass,
findings name file, line and rule, and the baseline file changes what passes."""

from __future__ import annotations

import json
import socket
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.review.catalog import RULES, Finding
from sandbox.review.check import CheckReport, check_set
from sandbox.review.roots import Host
from sandbox.review.source import read_dir

from .conftest import FIXTURES, CliRunner, write_policy

FAIL = FIXTURES / "fail"
PASS = FIXTURES / "pass"
FAIL_FILES = sorted(FAIL.glob("*.yaml"))


@pytest.fixture(scope="module")
def fail_report() -> CheckReport:
    home = FIXTURES / "no-home"  # does not exist: no credential directory is involved
    return check_set(read_dir(FAIL), Host(home=home))


def by_file(report: CheckReport) -> dict[str, list[Finding]]:
    grouped: dict[str, list[Finding]] = defaultdict(list)
    for finding in report.findings:
        grouped[Path(finding.path).stem].append(finding)
    return grouped


def rules_of(report: CheckReport) -> set[str]:
    return {finding.rule for finding in report.findings}


def check_dir(directory: Path, host: Host) -> CheckReport:
    return check_set(read_dir(directory), host)


@pytest.mark.parametrize("path", FAIL_FILES, ids=lambda p: p.stem)
def test_each_failing_fixture_is_named_by_its_rule_and_no_other(
    path: Path, fail_report: CheckReport
) -> None:
    expected = path.stem.split("_")[0].upper()
    findings = by_file(fail_report)[path.stem]
    assert findings, f"{path.name} passed the check"
    assert {f.rule for f in findings} == {expected}, [f.text() for f in findings]


def test_every_rule_has_a_failing_fixture() -> None:
    covered = {path.stem.split("_")[0].upper() for path in FAIL_FILES}
    assert covered == {rule.id for rule in RULES}


def test_passing_fixtures_have_no_findings(host: Host) -> None:
    report = check_dir(PASS, host)
    assert report.ok, [f.text() for f in report.findings]
    assert report.baseline.endswith("baseline.yaml")


def test_findings_carry_file_line_rule_and_key(fail_report: CheckReport) -> None:
    finding = by_file(fail_report)["sbx011_unjustified"][0]
    assert finding.path == str(FAIL / "sbx011_unjustified.yaml")
    assert finding.line == 11  # the `limits:` line of the fixture
    assert finding.key == "limits.memory_mb"
    assert finding.text().startswith(f"{finding.path}:11: SBX011: limits.memory_mb is 2048")


def test_parse_error_is_a_finding_with_the_line_of_the_bad_key(fail_report: CheckReport) -> None:
    [finding] = by_file(fail_report)["sbx001_unknown_key"]
    assert (finding.rule, finding.line, finding.key) == ("SBX001", 11, "limit")
    assert finding.message == "limit: unknown key"


def test_root_user_refused_by_the_format_is_reported_under_the_user_rule(
    fail_report: CheckReport,
) -> None:
    [finding] = by_file(fail_report)["sbx002_root"]
    assert finding.rule == "SBX002"
    assert "must not be root" in finding.message
    assert "Value error" not in finding.message


def test_every_open_schema_node_is_its_own_finding(fail_report: CheckReport) -> None:
    keys = {f.key for f in by_file(fail_report)["sbx007_open_schema"]}
    assert keys == {
        "args_schema.properties.query",
        "args_schema.properties.tags",
        "args_schema.properties.options",
        "args_schema.properties.anything",
    }


def test_secret_findings_never_quote_the_value(fail_report: CheckReport) -> None:
    text = " ".join(f.message for f in fail_report.findings)
    assert "hunter2" not in text
    assert "AKIAIOSFODNN7EXAMPLE" not in text


def test_cli_check_exits_1_on_findings_and_prints_file_line_rule(cli: CliRunner) -> None:
    code, out = cli("policy", "check", str(FAIL))
    assert code == 1
    assert f"{FAIL / 'sbx003_network.yaml'}:12: SBX003: network is bridge" in out
    assert out.rstrip().endswith("finding(s)")


def test_cli_check_exits_0_when_clean(cli: CliRunner) -> None:
    code, out = cli("policy", "check", str(PASS))
    assert code == 0
    assert "no findings" in out


def test_cli_check_defaults_to_the_global_policy_dir(cli: CliRunner) -> None:
    code, out = cli("--policies", str(PASS), "policy", "check")
    assert code == 0, out


def test_cli_check_json_lists_findings_with_their_fields(cli: CliRunner) -> None:
    code, out = cli("policy", "check", str(FAIL), "--format", "json")
    report = json.loads(out)
    assert code == 1
    assert report["ok"] is False
    first = report["findings"][0]
    assert set(first) == {"rule", "path", "line", "message", "key"}


def test_cli_check_of_a_missing_directory_is_a_usage_error(cli: CliRunner, tmp_path: Path) -> None:
    code, _ = cli("policy", "check", str(tmp_path / "nope"))
    assert code == 2


# --- the baseline -----------------------------------------------------------------------------


def test_baseline_file_can_require_runsc(tmp_path: Path, host: Host) -> None:
    write_policy(tmp_path, "tool", runtime="runc")
    (tmp_path / "baseline.yaml").write_text("version: 1\nruntimes: [runsc]\n")
    assert rules_of(check_dir(tmp_path, host)) == {"SBX010"}


def test_baseline_file_can_lower_a_ceiling(tmp_path: Path, host: Host) -> None:
    limits = {"timeout_s": 60, "memory_mb": 1024, "cpus": 1, "pids": 64, "tmpfs_mb": 64}
    write_policy(
        tmp_path,
        "tool",
        limits={**limits, "stdout_mb": 64},
        justification={"limits": "joins two large tables in memory"},
    )
    (tmp_path / "baseline.yaml").write_text("ceilings:\n  limits.memory_mb: 768\n")
    [finding] = check_dir(tmp_path, host).findings
    assert (finding.rule, finding.key) == ("SBX005", "limits.memory_mb")


def test_baseline_file_can_raise_a_justification_threshold(tmp_path: Path, host: Host) -> None:
    write_policy(
        tmp_path,
        "tool",
        limits={
            "timeout_s": 300,
            "memory_mb": 512,
            "cpus": 1,
            "pids": 64,
            "tmpfs_mb": 64,
            "stdout_mb": 64,
        },
    )
    assert rules_of(check_dir(tmp_path, host)) == {"SBX011"}
    (tmp_path / "baseline.yaml").write_text("justify_above:\n  limits.timeout_s: 600\n")
    assert check_dir(tmp_path, host).ok


def test_bad_baseline_is_a_finding_and_the_builtin_one_applies(tmp_path: Path, host: Host) -> None:
    write_policy(tmp_path, "tool")
    (tmp_path / "baseline.yaml").write_text("version: 1\nceilings:\n  limits.memry_mb: 1\n")
    report = check_dir(tmp_path, host)
    [finding] = report.findings
    assert (finding.rule, finding.line) == ("SBX001", 3)
    assert finding.path.endswith("baseline.yaml")
    assert report.baseline == "built-in"


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
@pytest.mark.parametrize("kind", ["ceilings", "justify_above"])
def test_a_baseline_number_that_is_not_finite_is_refused(
    tmp_path: Path, host: Host, kind: str, value: str
) -> None:
    # NaN compares false with everything: as a ceiling or threshold it would let any value
    # through while `policy diff` called the change tightening; infinity is no bound at all.
    write_policy(tmp_path, "tool")
    (tmp_path / "baseline.yaml").write_text(f"{kind}:\n  limits.memory_mb: {value}\n")
    report = check_dir(tmp_path, host)
    [finding] = report.findings
    assert (finding.rule, finding.key) == ("SBX001", f"{kind}.limits.memory_mb")
    assert "finite" in finding.message
    assert report.baseline == "built-in"


def test_cli_baseline_option_overrides_the_directory_baseline(
    cli: CliRunner, tmp_path: Path
) -> None:
    strict = tmp_path / "strict.yaml"
    strict.write_text("runtimes: [runsc]\n")
    code, out = cli("policy", "check", str(PASS), "--baseline", str(strict))
    assert code == 1
    assert "SBX010" in out


def test_justification_of_a_section_covers_each_field_in_it(tmp_path: Path, host: Host) -> None:
    write_policy(
        tmp_path,
        "tool",
        limits={
            "timeout_s": 600,
            "memory_mb": 2048,
            "cpus": 2,
            "pids": 128,
            "tmpfs_mb": 64,
            "stdout_mb": 64,
        },
        justification={"limits": "builds the full dbt project, about ten minutes"},
    )
    assert check_dir(tmp_path, host).ok


# --- input roots ------------------------------------------------------------------------------


def roots_findings(directory: Path, host: Host, *roots: str) -> list[str]:
    write_policy(
        directory,
        "tool",
        inputs={"allowed_roots": list(roots), "max": 1},
        justification={"inputs": "reads the files the caller names"},
    )
    report = check_dir(directory, host)
    assert rules_of(report) <= {"SBX008"}
    return [f.message for f in report.findings]


def test_input_root_inside_a_credential_directory_fails(tmp_path: Path, host: Host) -> None:
    (host.home / ".ssh").mkdir()
    [message] = roots_findings(tmp_path / "p", host, str(host.home / ".ssh"))
    assert "is credentials" in message


def test_input_root_containing_credentials_fails(tmp_path: Path, host: Host) -> None:
    [message] = roots_findings(tmp_path / "p", host, str(host.home))
    assert "contains credentials" in message
    assert str(host.home / ".aws") in message


def test_input_root_containing_a_system_directory_fails(tmp_path: Path, host: Host) -> None:
    messages = roots_findings(tmp_path / "p", host, "/var")
    assert any("contains system directory" in m and "/var/lib/docker" in m for m in messages)


@pytest.mark.parametrize("root", ["/proc/self/cwd", "/proc/thread-self/cwd"])
def test_input_root_written_under_a_system_directory_fails_wherever_it_resolves(
    tmp_path: Path, host: Host, monkeypatch: pytest.MonkeyPatch, root: str
) -> None:
    # /proc/self/cwd is the cwd of whichever process resolves it: here a harmless directory,
    # in a coordinator started from / the whole host.
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.chdir(data)
    messages = roots_findings(tmp_path / "p", host, root)
    assert any("system directory /" in m and "as written" in m for m in messages), messages


def test_input_root_that_is_a_symlink_loop_is_a_finding_not_a_crash(
    tmp_path: Path, host: Host
) -> None:
    (tmp_path / "loop").symlink_to("loop")
    [message] = roots_findings(tmp_path / "p", host, str(tmp_path / "loop"))
    assert "cannot be resolved" in message


def test_input_root_holding_the_docker_socket_fails(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    host = Host(home=tmp_path / "home", sockets=(data / "docker.sock",))
    [message] = roots_findings(tmp_path / "p", host, str(data))
    assert "contains the Docker socket" in message


@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "run" / "docker.sock"
    path.parent.mkdir()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    yield path
    server.close()


def test_input_root_with_any_unix_socket_inside_fails(
    tmp_path: Path, host: Host, unix_socket: Path
) -> None:
    [message] = roots_findings(tmp_path / "p", host, str(unix_socket.parent))
    assert f"contains the Unix socket {unix_socket}" in message


def test_input_root_under_a_directory_holding_a_docker_socket_fails(
    tmp_path: Path, host: Host, unix_socket: Path
) -> None:
    data = unix_socket.parent / "data"
    data.mkdir()
    [message] = roots_findings(tmp_path / "p", host, str(data))
    assert f"lies under {unix_socket.parent}, which holds the socket docker.sock" in message


def test_relative_input_root_resolves_from_the_policy_file(tmp_path: Path, host: Host) -> None:
    (tmp_path / "data").mkdir()
    assert roots_findings(tmp_path / "policies", host, "../data") == []


def test_home_directory_is_not_refused_whole_when_it_is_a_system_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOME", "/root")
    host = Host.current()
    assert Path("/root") not in host.system_dirs
    assert Path("/root/.ssh") in host.credentials
    assert Path("/etc") in host.system_dirs
