"""``policy diff OLD NEW``: every security-relevant change, marked loosening, tightening or
neutral; directories and git revisions alike; exit 1 exactly when something loosens."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sandbox.errors import PolicyFileError
from sandbox.review.diff import Change, diff_sets, loosens, render_json, render_text
from sandbox.review.schema_diff import schema_changes
from sandbox.review.source import PolicySet, load_all, load_baseline, read_dir, read_location

from .conftest import FIXTURES, CliRunner, assert_golden, write_policy

OLD = FIXTURES / "diff" / "old"
NEW = FIXTURES / "diff" / "new"


def changes_between(old: PolicySet, new: PolicySet) -> list[Change]:
    return diff_sets(
        load_all(old), load_all(new), load_baseline(old.baseline), load_baseline(new.baseline)
    )


@pytest.fixture(scope="module")
def fixture_changes() -> list[Change]:
    return changes_between(read_dir(OLD), read_dir(NEW))


def directions(changes: list[Change]) -> dict[tuple[str, str], str]:
    return {(c.tool, c.field): c.direction for c in changes}


def test_diff_text_matches_golden(fixture_changes: list[Change]) -> None:
    assert_golden("diff.txt", render_text(fixture_changes, "old", "new"))


def test_diff_json_matches_golden(fixture_changes: list[Change]) -> None:
    assert_golden("diff.json", render_json(fixture_changes, "old", "new"))


def test_diff_classifies_each_kind_of_change(fixture_changes: list[Change]) -> None:
    found = directions(fixture_changes)
    assert found[("alpha", "network")] == "loosening"
    assert found[("alpha", "runtime")] == "loosening"
    assert found[("alpha", "limits.memory_mb")] == "tightening"
    assert found[("alpha", "inputs.max")] == "loosening"
    assert found[("alpha", "image.id")] == "neutral"
    assert found[("alpha", "env.MODE")] == "neutral"
    assert found[("alpha", "args_schema.properties.name.maxLength")] == "loosening"
    assert found[("alpha", "args_schema.properties.extra")] == "loosening"
    assert found[("alpha", "args_schema.required")] == "loosening"
    assert found[("alpha", "args_schema.properties.window.properties.days.maximum")] == (
        "tightening"
    )
    assert found[("beta", "policy")] == "tightening"
    assert found[("gamma", "policy")] == "loosening"
    assert found[("(baseline)", "ceilings.limits.memory_mb")] == "loosening"
    assert found[("(baseline)", "min_uid")] == "tightening"


def test_descriptions_are_not_security_relevant(fixture_changes: list[Change]) -> None:
    fields = {c.field for c in fixture_changes}
    assert "description" not in fields
    assert not any(f.endswith(".description") for f in fields)


def test_new_root_inside_an_allowed_root_is_neutral_elsewhere_loosening(
    fixture_changes: list[Change],
) -> None:
    roots = {c.new: c.direction for c in fixture_changes if c.field == "inputs.allowed_roots"}
    assert roots == {"../data/archive": "neutral", "../secrets": "loosening"}


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ({"type": "string", "maxLength": 8}, {"type": "string", "maxLength": 9}, "loosening"),
        ({"type": "string", "maxLength": 8}, {"type": "string"}, "loosening"),
        ({"type": "string"}, {"type": "string", "pattern": "^a$"}, "tightening"),
        ({"type": "integer", "minimum": 0}, {"type": "integer", "minimum": -1}, "loosening"),
        ({"additionalProperties": False}, {"additionalProperties": True}, "loosening"),
        ({"additionalProperties": True}, {"additionalProperties": False}, "tightening"),
        ({"required": ["a"]}, {"required": ["a", "b"]}, "tightening"),
        ({"required": ["a", "b"]}, {"required": ["b", "a"]}, "neutral"),
        ({"enum": [1, 2]}, {"enum": [1]}, "tightening"),
        ({"type": "string"}, {"type": ["string", "null"]}, "loosening"),
        ({"$ref": "#/$defs/a"}, {"$ref": "#/$defs/b"}, "neutral"),
        (
            {"additionalProperties": False, "properties": {"a": {}}},
            {"additionalProperties": False, "properties": {}},
            "tightening",
        ),
        # A dropped property of an open object is accepted as anything now.
        ({"properties": {"a": {"maxLength": 8}}}, {"properties": {}}, "loosening"),
        ({"properties": {"a": {}}}, {"properties": {}}, "neutral"),
        # A key that also matches a pattern (both apply) is left to the pattern's schema, a key
        # of an object with a schema for the rest to that schema: which way cannot be told.
        (
            {
                "additionalProperties": False,
                "properties": {"a": {"maxLength": 8}},
                "patternProperties": {"^a": {"maxLength": 9999}},
            },
            {"additionalProperties": False, "patternProperties": {"^a": {"maxLength": 9999}}},
            "neutral",
        ),
        (
            {"additionalProperties": {"type": "string"}, "properties": {"a": {"maxLength": 8}}},
            {"additionalProperties": {"type": "string"}},
            "neutral",
        ),
        (
            {"unevaluatedProperties": False, "patternProperties": {"^a": {"maxLength": 8}}},
            {"unevaluatedProperties": False},
            "tightening",
        ),
        # Under `not` a change works the other way: a value gone from a denylist is allowed.
        ({"not": {"enum": ["admin", "root"]}}, {"not": {"enum": ["admin"]}}, "loosening"),
        ({"not": {"maxLength": 8}}, {"not": {"maxLength": 9}}, "tightening"),
        # Under `if` it picks which branch applies: which way cannot be told.
        ({"if": {"maxLength": 8}}, {"if": {"maxLength": 9}}, "neutral"),
    ],
)
def test_schema_change_direction(old: dict[str, Any], new: dict[str, Any], expected: str) -> None:
    [(_, direction, _, _)] = list(schema_changes(old, new, "args_schema"))
    assert direction == expected


def test_schema_annotations_are_ignored() -> None:
    old = {"type": "string", "maxLength": 8, "description": "a", "title": "A"}
    new = {"type": "string", "maxLength": 8, "description": "b", "examples": ["x"]}
    assert list(schema_changes(old, new, "args_schema")) == []


def test_identical_sets_have_no_changes_and_say_so() -> None:
    changes = changes_between(read_dir(OLD), read_dir(OLD))
    assert changes == []
    assert "no security-relevant changes" in render_text(changes, "a", "b")


def test_cli_diff_exits_1_when_anything_loosens(cli: CliRunner) -> None:
    code, out = cli("policy", "diff", str(OLD), str(NEW))
    assert code == 1
    assert "loosening   alpha: network: none -> egress" in out


def test_cli_diff_exits_0_when_only_tightening(cli: CliRunner, tmp_path: Path) -> None:
    for side in ("old", "new"):
        (tmp_path / side).mkdir()
        shutil.copy(FIXTURES / "diff" / side / "delta.yaml", tmp_path / side)
    code, out = cli("policy", "diff", str(tmp_path / "old"), str(tmp_path / "new"))
    assert code == 0, out
    assert "tightening  delta: network: egress -> none" in out


def test_text_output_shows_control_characters_instead_of_sending_them_to_the_terminal(
    cli: CliRunner, tmp_path: Path
) -> None:
    # ESC[1A ESC[2K in a justification moved up and erased the loosening printed above it;
    # U+202E reorders what follows it on screen.
    write_policy(tmp_path / "old", "tool")
    sneaky = "needed for the mirror, reviewed\x1b[1A\x1b[2K\u202e"
    write_policy(tmp_path / "new", "tool", network="mirror", justification={"network": sneaky})
    code, out = cli("policy", "diff", str(tmp_path / "old"), str(tmp_path / "new"))
    assert code == 1
    assert "loosening   tool: network: none -> mirror" in out
    assert "reviewed\\u001b[1A\\u001b[2K\\u202e" in out
    assert "\x1b" not in out
    assert "\u202e" not in out


def test_new_root_inside_an_allowed_root_that_links_out_of_it_is_loosening(
    tmp_path: Path,
) -> None:
    (tmp_path / "data" / "plain").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (tmp_path / "data" / "link").symlink_to("../secret")
    inputs = {"allowed_roots": ["../data"], "max": 1}
    write_policy(tmp_path / "old", "tool", inputs=inputs)
    roots = ["../data", "../data/plain", "../data/link/sub"]
    write_policy(tmp_path / "new", "tool", inputs={**inputs, "allowed_roots": roots})
    changes = changes_between(read_dir(tmp_path / "old"), read_dir(tmp_path / "new"))
    assert {c.new: c.direction for c in changes if c.field == "inputs.allowed_roots"} == {
        "../data/plain": "neutral",
        "../data/link/sub": "loosening",
    }


def test_cli_diff_json_says_whether_it_loosens(cli: CliRunner) -> None:
    import json

    code, out = cli("policy", "diff", str(OLD), str(NEW), "--format", "json")
    data = json.loads(out)
    assert code == 1
    assert data["loosens"] is True
    assert data["summary"]["loosening"] == sum(
        1 for c in data["changes"] if c["direction"] == "loosening"
    )


def test_diff_refuses_to_compare_a_policy_that_does_not_parse(
    cli: CliRunner, tmp_path: Path
) -> None:
    write_policy(tmp_path / "new", "tool")
    (tmp_path / "new" / "broken.yaml").write_text("version: 1\ntool: broken\nnetwrk: none\n")
    code, _ = cli("policy", "diff", str(OLD), str(tmp_path / "new"))
    assert code == 2


# --- git revisions ----------------------------------------------------------------------------


def git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=repo,
        env=env,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repo whose `main` holds the OLD policies and whose working tree holds NEW."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    shutil.copytree(OLD, root / "policies")
    git(root, "add", "policies")
    git(root, "commit", "-q", "-m", "old policies")
    shutil.rmtree(root / "policies")
    shutil.copytree(NEW, root / "policies")
    return root


def test_git_revision_diff_equals_the_directory_diff(
    repo: Path, fixture_changes: list[Change]
) -> None:
    old = read_location("git:main", Path("policies"), repo)
    new = read_location("policies", Path("policies"), repo)
    assert old.label == "git:main:policies"
    assert changes_between(old, new) == [
        Change(c.tool, c.field, c.direction, c.old, c.new) for c in fixture_changes
    ]


def test_git_location_takes_an_explicit_path_and_an_absolute_one(repo: Path) -> None:
    relative = read_location("git:main:policies", Path("unused"), repo)
    absolute = read_location("git:main", repo / "policies", repo / "policies")
    assert [s.text for s in relative.policies] == [s.text for s in absolute.policies]
    assert relative.baseline is not None


def test_git_policy_paths_name_the_revision(repo: Path) -> None:
    old = read_location("git:main", Path("policies"), repo)
    assert [str(s.path) for s in old.policies] == [
        "git:main:policies/alpha.yaml",
        "git:main:policies/beta.yaml",
        "git:main:policies/delta.yaml",
    ]


def test_git_path_absent_at_the_revision_reads_as_no_policies(repo: Path) -> None:
    empty = read_location("git:main:elsewhere", Path("policies"), repo)
    assert empty.policies == ()
    assert empty.baseline is None


def test_git_path_absent_on_the_side_under_review_is_an_error(repo: Path) -> None:
    # As NEW, a mistyped path read as every tool removed: tightening, exit 0.
    with pytest.raises(PolicyFileError, match="no directory 'elsewhere' at main"):
        read_location("git:main:elsewhere", Path("policies"), repo, required=True)
    assert read_location("git:main", Path("policies"), repo, required=True).policies


def test_a_policy_committed_as_a_symlink_is_read_through_it(repo: Path) -> None:
    # The loader follows a symlinked policy file, so a revision must too: skipping it let
    # `diff git:A git:B` miss a tool added (or loosened) through a link.
    git(repo, "checkout", "-q", "-b", "pr")
    (repo / "elsewhere").mkdir()
    shutil.move(repo / "policies" / "alpha.yaml", repo / "elsewhere" / "alpha.yaml")
    (repo / "policies" / "alpha.yaml").symlink_to("../elsewhere/alpha.yaml")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "new policies, one through a link")
    old = read_location("git:main", Path("policies"), repo)
    new = read_location("git:HEAD", Path("policies"), repo)
    assert changes_between(old, new) == changes_between(read_dir(OLD), read_dir(NEW))


def test_a_policy_symlink_leaving_the_revision_is_an_error(repo: Path) -> None:
    (repo / "policies" / "alpha.yaml").unlink()
    (repo / "policies" / "alpha.yaml").symlink_to("/etc/hostname")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "a link out of the tree")
    with pytest.raises(PolicyFileError, match="symlink") as err:
        read_location("git:HEAD", Path("policies"), repo)
    assert err.value.details["path"] == "git:HEAD:policies/alpha.yaml"


def test_unknown_git_revision_is_an_error(repo: Path) -> None:
    with pytest.raises(PolicyFileError, match="unknown git revision 'nope'"):
        read_location("git:nope", Path("policies"), repo)


def test_git_ref_that_looks_like_an_option_is_refused(repo: Path) -> None:
    with pytest.raises(PolicyFileError, match="expected git:REF"):
        read_location("git:--output=/tmp/x", Path("policies"), repo)


def test_cli_diff_against_git_main_reports_loosening(
    cli: CliRunner, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(repo)
    # `make` exports an absolute SANDBOX_POLICY_DIR; git:main must default to ./policies here.
    monkeypatch.delenv("SANDBOX_POLICY_DIR", raising=False)
    code, out = cli("policy", "diff", "git:main", "policies/")
    assert code == 1
    assert out.startswith("policy diff git:main:policies -> policies/\n")
    assert loosens(changes_between(read_dir(OLD), read_dir(NEW)))
