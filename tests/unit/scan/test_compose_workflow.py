"""compose.yaml builds what `sandbox images build` builds (docker compose may be absent, so the
file is checked structurally), and the CI workflow has its build/scan/SARIF/lock steps."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from sandbox.images import LABEL_LOCK, LABEL_REVISION, plan_images
from sandbox.policy import load_policy_dir

ROOT = Path(__file__).resolve().parents[3]


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "compose.yaml").read_text()))


def test_compose_has_a_service_per_image_with_the_same_tag_args_and_labels() -> None:
    services = _compose()["services"]
    dirs = sorted(p.parent.name for p in (ROOT / "images").glob("*/Dockerfile"))
    assert sorted(services) == dirs
    for name, service in services.items():
        build = service["build"]
        assert service["image"] == f"sandbox/{name}:latest"
        assert build["context"] == "."
        assert build["dockerfile"] == f"images/{name}/Dockerfile"
        assert build["network"] == "host"
        assert build["labels"][LABEL_REVISION] == f"${{SANDBOX_REVISION_{name.upper()}:-unknown}}"
        has_lock = (ROOT / "images" / name / "requirements.lock").is_file()
        assert (LABEL_LOCK in build["labels"]) == has_lock, name
        if has_lock:
            assert build["labels"][LABEL_LOCK] == f"${{SANDBOX_LOCK_{name.upper()}:-}}"
        if name != "base":
            assert build["args"] == {"BASE": "sandbox/base:latest"}
            assert service["depends_on"] == ["base"]


def test_compose_covers_every_image_the_policies_build() -> None:
    plans = plan_images(load_policy_dir(ROOT / "policies"), [], ROOT)
    services = _compose()["services"]
    for plan in plans:
        assert services[plan.name]["image"] == plan.tag
        assert services[plan.name]["build"].get("args", {}) == plan.buildargs


def test_workflow_builds_scans_uploads_sarif_and_checks_the_lock() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "images.yml").read_text())
    steps = workflow["jobs"]["images"]["steps"]
    runs = "\n".join(s.get("run", "") for s in steps)
    uses = [s.get("uses", "") for s in steps]
    assert "sandbox images build" in runs
    assert re.search(r"sandbox images scan --advisory-db \S+", runs)
    assert "sandbox images lock --check" in runs
    assert any(u.startswith("github/codeql-action/upload-sarif@") for u in uses)
    assert workflow["jobs"]["images"]["permissions"]["security-events"] == "write"
    assert workflow["permissions"] == {"contents": "read"}
