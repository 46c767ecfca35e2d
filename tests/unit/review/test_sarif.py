"""``policy check --format sarif``: a SARIF 2.1.0 log GitHub code scanning accepts, one result
per finding at its file and line, with the rule metadata alongside."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from sandbox.review.catalog import RULES
from sandbox.review.check import check_set
from sandbox.review.roots import Host
from sandbox.review.sarif import artifact_uri, sarif_log
from sandbox.review.source import read_dir

from .conftest import FIXTURES, ROOT, CliRunner

SUBSET_SCHEMA = json.loads((FIXTURES / "sarif-2.1.0-subset.schema.json").read_text())


@pytest.fixture(scope="module")
def log() -> dict[str, Any]:
    report = check_set(read_dir(FIXTURES / "fail"), Host(home=FIXTURES / "no-home"))
    return sarif_log(report, ROOT)


def test_sarif_log_matches_the_sarif_subset_schema(log: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(SUBSET_SCHEMA)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(log)]
    assert errors == []


def test_sarif_declares_every_rule_with_its_help_and_severity(log: dict[str, Any]) -> None:
    rules = log["runs"][0]["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == [rule.id for rule in RULES]
    assert all(0 < float(r["properties"]["security-severity"]) <= 10 for r in rules)


def test_sarif_results_point_at_repository_relative_files_and_lines(log: dict[str, Any]) -> None:
    run = log["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    result = next(r for r in run["results"] if r["ruleId"] == "SBX011")
    location = result["locations"][0]["physicalLocation"]
    assert location["artifactLocation"]["uri"] == (
        "tests/unit/review/fixtures/fail/sbx011_unjustified.yaml"
    )
    assert location["region"]["startLine"] == 11
    assert rules[result["ruleIndex"]]["id"] == "SBX011"


def test_sarif_fingerprints_are_distinct_per_finding(log: dict[str, Any]) -> None:
    prints = [
        r["partialFingerprints"]["sandboxPolicyFinding/v1"] for r in log["runs"][0]["results"]
    ]
    assert len(set(prints)) == len(prints)


def test_file_outside_the_base_gets_a_file_uri(tmp_path: Path) -> None:
    assert artifact_uri(str(tmp_path / "x.yaml"), ROOT) == (tmp_path / "x.yaml").as_uri()


def test_cli_sarif_is_json_and_exits_1_on_findings(cli: CliRunner) -> None:
    code, out = cli("policy", "check", str(FIXTURES / "fail"), "--format", "sarif")
    assert code == 1
    assert json.loads(out)["version"] == "2.1.0"
