"""`sandbox images lock` edits: only the value of image.id changes, comments and layout stay."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sandbox.docker_runtime import missing_image, short_name
from sandbox.errors import InvalidRequest
from sandbox.images import (
    apply_lock,
    compose_env,
    plan_images,
    plan_lock,
    replace_image_id,
    revision,
    tagged,
)
from sandbox.policy import load_policy_dir

OLD = "sha256:" + "0" * 64
NEW = "sha256:" + "f" * 64
FLOW = f"""# yaml-language-server: $schema=../docs/policy.schema.json
version: 1
tool: demo
# the image, pinned
image: {{name: sandbox/demo, id: "{OLD}"}}   # pinned by `sandbox images lock`
command: ["python3", "/opt/tool/main.py"]
env: {{id: keep-me}}
"""
BLOCK = f"""version: 1
tool: demo
image:
  # which image
  name: sandbox/demo
  id: '{OLD}'  # keep this comment
command: ["python3", "/opt/tool/main.py"]
"""


def test_flow_style_pin_is_rewritten_in_place() -> None:
    new = replace_image_id(FLOW, NEW, Path("demo.yaml"))
    assert new == FLOW.replace(OLD, NEW)


def test_block_style_pin_is_rewritten_in_place_and_comments_survive() -> None:
    new = replace_image_id(BLOCK, NEW, Path("demo.yaml"))
    assert new == BLOCK.replace(f"'{OLD}'", f'"{NEW}"')
    assert "# keep this comment" in new
    assert "# which image" in new


def test_id_first_in_flow_mapping() -> None:
    text = FLOW.replace(
        f'{{name: sandbox/demo, id: "{OLD}"}}', f"{{id: {OLD}, name: sandbox/demo}}"
    )
    assert f'{{id: "{NEW}", name: sandbox/demo}}' in replace_image_id(text, NEW, Path("demo.yaml"))


def test_a_value_that_is_not_an_image_id_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="not an image id"):
        replace_image_id(FLOW, "sha256:nope", Path("demo.yaml"))


def test_a_layout_it_cannot_edit_minimally_is_refused_not_mangled() -> None:
    anchored = FLOW.replace(
        f'image: {{name: sandbox/demo, id: "{OLD}"}}',
        f'image: {{"name": sandbox/demo, "id": "{OLD}"}}',
    )
    with pytest.raises(InvalidRequest, match="by hand"):
        replace_image_id(anchored, NEW, Path("demo.yaml"))


class _Engine:
    """The one engine call ``plan_lock`` makes: the local id of an image."""

    def inspect_image(self, ref: str) -> dict[str, str]:
        return {"Id": NEW}


def test_lock_keeps_crlf_line_endings_and_shows_the_diff_it_writes(tmp_path: Path) -> None:
    path = tmp_path / "demo.yaml"
    before = FLOW.replace("\n", "\r\n").encode()
    path.write_bytes(before)
    [change] = plan_lock(_Engine(), [path])  # type: ignore[arg-type]
    apply_lock(change)
    assert path.read_bytes() == before.replace(OLD.encode(), NEW.encode())
    [removed] = [line for line in change.diff.splitlines(keepends=True) if line.startswith("-i")]
    assert removed.endswith("\r\n")


def test_names_and_tags() -> None:
    assert short_name("sandbox/dbt") == "dbt"
    assert short_name("registry:5000/sandbox/dbt:1.0") == "dbt"
    assert tagged("sandbox/dbt") == "sandbox/dbt:latest"
    assert tagged("registry:5000/sandbox/dbt") == "registry:5000/sandbox/dbt:latest"
    assert tagged("sandbox/dbt:1.0") == "sandbox/dbt:1.0"


def test_a_missing_image_names_the_command_that_builds_it() -> None:
    # The fix said `sandbox images build NAME`, leaving the reader to work out NAME.
    error = missing_image("sandbox/dbt:latest")
    assert error.fix is not None
    assert "`sandbox images build dbt`" in error.fix


def _policies(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for name in ("base", "demo"):
        (root / "images" / name).mkdir(parents=True)
        (root / "images" / name / "Dockerfile").write_text("FROM scratch\n")
    (root / "images" / "demo" / "requirements.lock").write_text("x==1\n")
    (root / "policies").mkdir()
    (root / "policies" / "demo.yaml").write_text(FLOW)
    return root


def test_build_plan_is_base_first_then_each_policy_image_once(tmp_path: Path) -> None:
    root = _policies(tmp_path)
    policies = load_policy_dir(root / "policies")
    plans = plan_images(policies, [], root)
    assert [(p.tag, p.buildargs, p.tools) for p in plans] == [
        ("sandbox/base:latest", {}, ()),
        ("sandbox/demo:latest", {"BASE": "sandbox/base:latest"}, ("demo",)),
    ]
    side = plan_images(policies, ["demo"], root, prefix="sandbox-fixture/")
    assert [p.tag for p in side] == ["sandbox-fixture/base:latest", "sandbox-fixture/demo:latest"]
    assert side[1].buildargs == {"BASE": "sandbox-fixture/base:latest"}
    with pytest.raises(InvalidRequest, match="unknown tool or image nope"):
        plan_images(policies, ["nope"], root)
    env = compose_env(root, ["base", "demo"])
    assert env["SANDBOX_LOCK_BASE"] == ""
    assert len(env["SANDBOX_LOCK_DEMO"]) == 64
    assert set(env) == {
        "SANDBOX_REVISION_BASE",
        "SANDBOX_LOCK_BASE",
        "SANDBOX_REVISION_DEMO",
        "SANDBOX_LOCK_DEMO",
    }


def test_build_plan_tags_each_image_as_its_policy_names_it(tmp_path: Path) -> None:
    # `lock`, `doctor` and runs look the image up by the policy's image.name; build and scan
    # used sandbox/NAME:latest whatever the name, so a tagged (or other-repository) name was
    # built, then reported "not built" by lock, and scanned under a tag runs never use.
    root = _policies(tmp_path)
    text = FLOW.replace("name: sandbox/demo,", "name: acme/demo:2.1,")
    (root / "policies" / "demo.yaml").write_text(text)
    plans = plan_images(load_policy_dir(root / "policies"), ["demo"], root)
    assert [p.tag for p in plans] == ["sandbox/base:latest", "acme/demo:2.1"]
    assert plans[1].buildargs == {"BASE": "sandbox/base:latest"}
    side = plan_images(load_policy_dir(root / "policies"), [], root, prefix="sandbox-fixture/")
    assert [p.tag for p in side] == ["sandbox-fixture/base:latest", "sandbox-fixture/demo:latest"]
    # Two policies naming one Dockerfile's image differently: one build cannot be both.
    (root / "policies" / "other.yaml").write_text(
        FLOW.replace("tool: demo", "tool: other").replace("name: sandbox/demo,", "name: x/demo,")
    )
    with pytest.raises(InvalidRequest, match="name it acme/demo:2.1 and x/demo:latest"):
        plan_images(load_policy_dir(root / "policies"), [], root)


def test_a_new_tool_no_commit_has_touched_is_labelled_dirty_not_unknown(tmp_path: Path) -> None:
    # `unknown` is for builds outside git; a tool directory not committed yet used to get it
    # too, so its image claimed no provenance instead of saying it came from uncommitted files.
    root = _policies(tmp_path)

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)  # noqa: S603, S607

    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x")
    head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"],  # noqa: S607
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert revision(root, "demo") == f"{head}-dirty"
    git("add", "images")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "images")
    assert not revision(root, "demo").endswith("-dirty")
