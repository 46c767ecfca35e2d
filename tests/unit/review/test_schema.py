"""``policy schema``: the JSON Schema comes from the ``Policy`` model, the committed copy in
``docs/`` is exactly it (``make lint`` runs this file), and the policies validate against it and
point editors at it."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from sandbox.policy import policy_files
from sandbox.review.schema import COMMITTED_PATH, policy_schema, render_schema

from .conftest import FIXTURES, ROOT, CliRunner

COMMITTED = ROOT / COMMITTED_PATH
HEADER = "# yaml-language-server: $schema=../docs/policy.schema.json"
REPO_POLICIES = policy_files(ROOT / "policies")


def test_committed_schema_equals_the_model_schema() -> None:
    assert COMMITTED.read_text() == render_schema(), (
        f"{COMMITTED_PATH} is stale: run `python -m sandbox policy schema > {COMMITTED_PATH}`"
    )


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(policy_schema())


def test_schema_carries_the_field_docs_for_editors() -> None:
    limits = policy_schema()["$defs"]["Limits"]["properties"]
    assert "swap" in limits["memory_mb"]["description"]
    assert policy_schema()["additionalProperties"] is False


def test_cli_schema_prints_the_committed_schema(cli: CliRunner) -> None:
    code, out = cli("policy", "schema")
    assert code == 0
    assert json.loads(out) == json.loads(COMMITTED.read_text())


@pytest.mark.parametrize(
    "path",
    [*REPO_POLICIES, *sorted((FIXTURES / "pass").glob("[!b]*.yaml"))],
    ids=lambda p: p.name,
)
def test_valid_policies_validate_against_the_committed_schema(path: Path) -> None:
    schema = json.loads(COMMITTED.read_text())
    jsonschema.validate(yaml.safe_load(path.read_text()), schema)


def test_schema_rejects_a_misspelled_key_as_editors_will_show() -> None:
    schema = json.loads(COMMITTED.read_text())
    data = yaml.safe_load((FIXTURES / "pass" / "minimal.yaml").read_text())
    data["limits"]["memry_mb"] = 1
    with pytest.raises(jsonschema.ValidationError, match="memry_mb"):
        jsonschema.validate(data, schema)


@pytest.mark.parametrize("path", REPO_POLICIES, ids=lambda p: p.name)
def test_repository_policies_point_editors_at_the_schema(path: Path) -> None:
    assert path.read_text().splitlines()[0] == HEADER
