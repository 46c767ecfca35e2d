"""The pure parts under the rules: closed-schema analysis, secret heuristics, relaxations and
their justifications, and the YAML key locator."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from sandbox.review.argschema import bounded_pattern, open_nodes
from sandbox.review.locate import KeyLines
from sandbox.review.relax import justification_for
from sandbox.review.secrets import name_reason, value_reason


@pytest.mark.parametrize(
    ("pattern", "bounded"),
    [
        ("^[a-z]{1,32}$", True),
        ("^(fast|full)$", True),
        (r"^[a-z]\w{0,8}$", True),
        ("^[a-z]+$", False),
        ("^a.*$", False),
        ("^[a-z]{2,}$", False),
        ("^a$|b$", False),
        ("[a-z]{1,3}", False),
        (r"^a\$", False),
    ],
)
def test_pattern_bounds_length_only_when_anchored_without_unbounded_repetition(
    pattern: str, bounded: bool
) -> None:
    assert bounded_pattern(pattern) is bounded


def schema(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": properties}


def paths(value: dict[str, Any]) -> list[str]:
    return [".".join(map(str, node.path)) for node in open_nodes(value)]


def test_closed_schema_has_no_open_nodes() -> None:
    closed = schema(
        a={"type": "string", "maxLength": 4},
        b={"type": "array", "maxItems": 2, "items": {"enum": [1, 2]}},
        c={"anyOf": [{"type": "integer"}, {"type": "null"}]},
        d={"$ref": "#/$defs/d"},
    )
    closed["$defs"] = {"d": {"type": "boolean"}}
    assert paths(closed) == []


def test_open_nodes_are_found_at_any_depth_and_in_defs() -> None:
    value = schema(
        deep={"type": "array", "maxItems": 2, "items": schema(s={"type": "string"})},
        any_of={"anyOf": [{"type": "string"}, {"type": "integer"}]},
        tuple_={"type": "array", "maxItems": 2, "prefixItems": [{"type": "integer"}]},
        yes=True,
    )
    value["$defs"] = {"loose": {"type": "object"}}
    assert paths(value) == [
        "args_schema.properties.deep.items.properties.s",
        "args_schema.properties.any_of.anyOf.0",
        "args_schema.properties.tuple_",
        "args_schema.properties.yes",
        "args_schema.$defs.loose",
    ]


def test_remote_ref_is_open_because_the_file_does_not_show_it() -> None:
    [node] = open_nodes(schema(x={"$ref": "https://example.com/s.json"}))
    assert "outside the schema" in node.problem


@pytest.mark.parametrize(
    ("name", "flagged"),
    [
        ("API_TOKEN", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("OPENAI_API_KEY", True),
        ("GOOGLE_APPLICATION_CREDENTIALS", True),
        ("TOKENIZERS_PARALLELISM", False),
        ("SORT_KEY", False),
        ("DBT_PROFILES_DIR", False),
        ("AIRBYTE_OFFLINE_MODE", False),
    ],
)
def test_secret_names_are_matched_by_whole_words(name: str, flagged: bool) -> None:
    assert (name_reason(name) is not None) is flagged


@pytest.mark.parametrize(
    ("value", "flagged"),
    [
        ("AKIAIOSFODNN7EXAMPLE", True),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn", True),
        ("postgres://loader:s3cret@db/warehouse", True),
        ("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", True),
        ("5f70bf18a086007016e948b04aed3b82103a36be", True),
        ("/opt/venvs/airbyte/bin/source-faker", False),
        ("http://proxy.internal:3128", False),
        ("en_US.UTF-8", False),
        ("my_project_name_is_long_enough", False),
        ("1", False),
    ],
)
def test_secret_values_are_matched_by_pattern_or_entropy(value: str, flagged: bool) -> None:
    reason = value_reason(value)
    assert (reason is not None) is flagged
    assert reason is None or value not in reason


def test_justification_of_the_field_wins_over_its_section() -> None:
    reasons = {"limits": "section reason", "limits.memory_mb": "field reason"}
    assert justification_for("limits.memory_mb", reasons) == "field reason"
    assert justification_for("limits.cpus", reasons) == "section reason"
    assert justification_for("network", reasons) is None


def test_key_lines_find_nested_keys_and_fall_back_to_the_parent() -> None:
    node = yaml.compose("a: 1\nlimits:\n  memory_mb: 2\nlist:\n  - x\n  - y\n")
    lines = KeyLines(node)
    assert lines.line(("limits", "memory_mb")) == 3
    assert lines.line(("limits", "cpus")) == 2
    assert lines.line(("list", 1)) == 6
    assert lines.has(("limits", "memory_mb"))
    assert not lines.has(("limits", "cpus"))
