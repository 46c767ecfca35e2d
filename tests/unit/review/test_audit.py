"""``policy audit`` and ``policy explain``: the engine settings are exactly the spec's kwargs,
relaxations come with their justifications, the risk names its reasons, and the Markdown
report is stable (golden)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandbox.review.audit import (
    INPUT_NAME,
    INPUT_SOURCE,
    LABEL_PLACEHOLDERS,
    RUN_ID,
    STAGING_DIR,
    STDOUT_PIPE,
    AuditEntry,
    AuditReport,
    audit_set,
    effective_kwargs,
)
from sandbox.review.audit_md import render_md
from sandbox.review.explain import SDK_ONLY, docker_argv
from sandbox.review.roots import Host
from sandbox.review.source import load, read_dir
from sandbox.spec import STDOUT_PIPE_TARGET, Owner, build_spec

from .conftest import FIXTURES, ROOT, CliRunner, assert_golden, write_policy

PASS = FIXTURES / "pass"


@pytest.fixture(scope="module")
def report() -> AuditReport:
    return audit_set(read_dir(PASS), Host(home=FIXTURES / "no-home"))


def entry(report: AuditReport, tool: str) -> AuditEntry:
    return next(e for e in report.entries if e.tool == tool)


def test_audit_markdown_matches_golden(report: AuditReport) -> None:
    text = render_md(report).replace(str(FIXTURES), "<fixtures>")
    assert_golden("audit.md", text)


def test_engine_settings_are_the_spec_kwargs_with_placeholders(report: AuditReport) -> None:
    loaded = load(read_dir(PASS).policies[0])
    expected = build_spec(
        loaded.policy,
        run_id=RUN_ID,
        policy_sha256=loaded.sha256,
        inputs={INPUT_NAME: INPUT_SOURCE} if loaded.policy.inputs.max else {},
        staging_dir=STAGING_DIR,
        timeout_s=loaded.policy.limits.timeout_s,
        owner=Owner(pid=0, start_time=0.0, host="h"),
        deadline=0.0,
        stdout_pipe=STDOUT_PIPE,
    ).create_kwargs()
    actual = effective_kwargs(loaded)
    assert {k: v for k, v in actual.items() if k != "labels"} == {
        k: v for k, v in expected.items() if k != "labels"
    }
    for label, placeholder in LABEL_PLACEHOLDERS.items():
        assert actual["labels"][label] == placeholder


def test_audit_shows_hardening_defaults_the_policy_does_not_mention(report: AuditReport) -> None:
    kwargs = entry(report, "minimal").create_kwargs
    assert kwargs["cap_drop"] == ["ALL"]
    assert kwargs["read_only"] is True
    assert kwargs["security_opt"] == ["no-new-privileges:true"]
    assert kwargs["network_mode"] == "none"
    assert kwargs["privileged"] is False


def test_input_mount_is_shown_read_only_only_when_inputs_are_allowed(report: AuditReport) -> None:
    def targets(tool: str) -> dict[str, bool]:
        mounts = entry(report, tool).create_kwargs["mounts"]
        return {m["Target"]: m["ReadOnly"] for m in mounts}

    pipe = {STDOUT_PIPE_TARGET: True}
    assert targets("minimal") == {"/output": False, **pipe}
    assert targets("loader") == {f"/inputs/{INPUT_NAME}": True, "/output": False, **pipe}


def test_relaxations_carry_their_justifications(report: AuditReport) -> None:
    relaxed = {r.field: r.justification for r in entry(report, "loader").relaxations}
    assert relaxed["network"] == (
        "pulls the day's files from the internal mirror through the egress proxy network"
    )
    assert relaxed["limits.memory_mb"] == relaxed["limits.timeout_s"]  # both from `limits`
    assert entry(report, "minimal").relaxations == ()


def test_risk_is_low_for_strict_defaults_and_high_with_network(report: AuditReport) -> None:
    assert entry(report, "minimal").risk.level == "low"
    loader = entry(report, "loader").risk
    assert loader.level == "high"
    assert loader.reasons[0].text.startswith("network `loader_egress`")


def test_risk_is_medium_when_the_tool_reads_host_files(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    write_policy(
        tmp_path / "p",
        "reader",
        inputs={"allowed_roots": ["../data"], "max": 1},
        justification={"inputs": "reads the CSV files the caller names"},
    )
    report = audit_set(read_dir(tmp_path / "p"), Host(home=tmp_path / "home"))
    assert report.entries[0].risk.level == "medium"


def test_failing_policy_is_high_risk_and_lists_its_findings(tmp_path: Path) -> None:
    write_policy(tmp_path, "netty", network="bridge")
    [audited] = audit_set(read_dir(tmp_path), Host(home=tmp_path / "home")).entries
    assert audited.risk.level == "high"
    assert [f.rule for f in audited.findings] == ["SBX003"]


def test_cli_audit_json_has_settings_relaxations_and_risk(cli: CliRunner) -> None:
    code, out = cli("policy", "audit", str(PASS), "--format", "json")
    data = json.loads(out)
    assert code == 0
    loader = next(t for t in data["tools"] if t["tool"] == "loader")
    assert loader["create_kwargs"]["runtime"] == "runsc"
    assert loader["risk"]["level"] == "high"
    assert {"field", "value", "strict", "rule", "justification"} <= set(loader["relaxations"][0])


def test_cli_audit_exits_1_and_lists_files_that_do_not_parse(
    cli: CliRunner, tmp_path: Path
) -> None:
    write_policy(tmp_path, "good")
    (tmp_path / "bad.yaml").write_text("version: 1\ntool: bad\nnetwrk: none\n")
    code, out = cli("policy", "audit", str(tmp_path))
    assert code == 1
    assert "## Files that do not parse" in out
    assert "## `good`: risk low" in out


# --- explain ----------------------------------------------------------------------------------


def test_docker_cli_renders_every_kwarg_or_says_it_cannot(report: AuditReport) -> None:
    for audited in report.entries:
        groups, gaps = docker_argv(audited.create_kwargs)
        assert set(gaps) == set(SDK_ONLY), gaps
        flat = [arg for group in groups for arg in group]
        assert flat[:2] == ["docker", "create"]
        assert flat[-len(audited.create_kwargs["command"]) - 1] == audited.image_id


def test_docker_cli_flags_match_the_kwargs(report: AuditReport) -> None:
    groups, _ = docker_argv(entry(report, "loader").create_kwargs)
    assert ["--runtime", "runsc"] in groups
    assert ["--network", "loader_egress"] in groups
    assert ["--memory", str(2048 * 1024 * 1024)] in groups
    assert ["--cpus", "2"] in groups
    assert ["--cap-drop", "ALL"] in groups
    assert ["--mount", f"type=bind,source={INPUT_SOURCE},target=/inputs/{INPUT_NAME},readonly"] in (
        groups
    )


def test_cli_explain_prints_kwargs_and_docker_command(cli: CliRunner) -> None:
    code, out = cli("--policies", str(PASS), "policy", "explain", "loader")
    assert code == 0
    kwargs_text = out.split("# docker SDK")[1].split("# the same as")[0]
    kwargs = json.loads(kwargs_text.split("\n", 1)[1])
    assert kwargs["runtime"] == "runsc"
    assert "docker create \\\n    --name 'sandbox-<run_id>'" in out


def test_cli_explain_json_has_the_docker_argv(cli: CliRunner) -> None:
    code, out = cli("--policies", str(PASS), "policy", "explain", "minimal", "--format", "json")
    data = json.loads(out)
    assert code == 0
    assert data["docker_argv"][:2] == ["docker", "create"]
    assert set(data["docker_cli_gaps"]) == set(SDK_ONLY)


def test_cli_explain_of_an_unknown_tool_is_denied(cli: CliRunner) -> None:
    code, _ = cli("--policies", str(PASS), "policy", "explain", "nosuchtool")
    assert code == 3


def test_repository_policies_can_be_explained(cli: CliRunner) -> None:
    code, out = cli("--policies", str(ROOT / "policies"), "policy", "explain", "testkit")
    assert code == 0
    assert "docker create" in out


def test_policy_text_cannot_hide_or_forge_parts_of_the_markdown_report(tmp_path: Path) -> None:
    # A line starting `<!--` opens an HTML block that hides the rest of the rendered report
    # (this tool's risk and findings, every later tool); a line starting `##` forges a section.
    write_policy(
        tmp_path,
        "sneaky",
        description="Echo tool.\n\n<!-- reviewed\n## `sneaky`: risk low",
        command=["python3", "/opt/tool/main.py", "x\n<!--"],
        inputs={"allowed_roots": ["data\n<!--"], "max": 1},
        justification={"inputs": "reads what the caller names\n<!--"},
    )
    text = render_md(audit_set(read_dir(tmp_path), Host(home=tmp_path / "home")))
    lines = text.splitlines()
    assert not [line for line in lines if line.lstrip().startswith("<!--")]
    assert [line for line in lines if line.startswith("## ")] == ["## `sneaky`: risk high"]
    assert "Echo tool. &lt;!-- reviewed ## `sneaky`: risk low" in lines


def test_explain_shows_control_characters_in_policy_values_as_escapes(
    cli: CliRunner, tmp_path: Path
) -> None:
    write_policy(tmp_path, "tool", env={"MODE": "fast\x1b[2K\x1b[1A"})
    code, out = cli("--policies", str(tmp_path), "policy", "explain", "tool")
    assert code == 0
    assert "\x1b" not in out
    assert "MODE=fast\\u001b[2K\\u001b[1A" in out
