"""`sandbox images build|lock|scan` against the real engine: deliberately bad fixture images
(tests/fixtures/images, FROM sandbox/base, built offline) each fail the scan with the right
finding; sandbox/testkit passes and says what was not checked; builds stream, label and fail
with the failing step's log; lock rewrites only image.id."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandbox import images
from tests.conftest import ROOT

pytestmark = pytest.mark.docker

FIXTURES = ROOT / "tests" / "fixtures"
ADVISORY_DB = FIXTURES / "advisory-db"
PREFIX = "sandbox-fixture/"
BAD = {
    "setuid": "fs.setuid",
    "root-user": "config.root-user",
    "drift": "packages.drift-version",
    "vulnerable": "vuln.FIXTURE-2024-0001",
}


@dataclass
class Cli:
    returncode: int
    stdout: str
    stderr: str


def run_cli(args: list[str], *, policies: Path | None = None, timeout: float = 300) -> Cli:
    """The CLI as a subprocess (stdout here is a report, not frames)."""
    argv = [sys.executable, "-m", "sandbox"]
    if policies is not None:
        argv += ["--policies", str(policies)]
    proc = subprocess.run(
        argv + args,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
        env={**os.environ},
    )
    return Cli(proc.returncode, proc.stdout, proc.stderr)


def _remove(api: Any, tag: str) -> None:
    if images.image_id(api, tag) is not None:
        api.remove_image(tag, force=True)


@pytest.fixture(scope="module")
def api() -> Iterator[Any]:
    client = images.connect()
    if images.image_id(client, images.BASE_IMAGE) is None:
        pytest.fail("sandbox/base is not built: run `make base-image` (or `sandbox images build`)")
    yield client
    client.close()


@pytest.fixture(scope="module")
def fixture_images(api: Any) -> Iterator[dict[str, str]]:
    """The bad fixtures, built with the project's own builder (context = tests/fixtures)."""
    built = {}
    for name in BAD:
        plan = images.ImagePlan(name, f"{PREFIX}{name}:latest")
        labels = images.image_labels(FIXTURES, name, "fixture")
        built[name] = images.build_one(api, FIXTURES, plan, labels, lambda _e: None)
    yield built
    for name in BAD:
        _remove(api, f"{PREFIX}{name}:latest")


def _scan(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    out = tmp_path / "scan"
    result = run_cli(
        ["images", "scan", "--output", str(out), "--format", "json", *args], timeout=300
    )
    report = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.returncode, report, result.stderr


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_bad_fixture_image_fails_the_scan_with_its_finding(
    name: str, fixture_images: dict[str, str], tmp_path: Path
) -> None:
    code, report, stderr = _scan(
        tmp_path,
        "--image",
        f"{PREFIX}{name}={FIXTURES / 'images' / name}",
        "--advisory-db",
        str(ADVISORY_DB),
    )
    assert code == 1, stderr
    (image,) = report["images"]
    assert image["verdict"] == "fail"
    assert image["image_id"] == fixture_images[name]
    rules = {f["rule_id"]: f for f in image["findings"]}
    assert BAD[name] in rules, sorted(rules)
    assert rules[BAD[name]]["severity"] in ("high", "critical")
    assert Path(image["sbom"]).is_file()


def test_drift_and_vulnerable_fixtures_point_at_their_lock_files(
    fixture_images: dict[str, str], tmp_path: Path
) -> None:
    _, report, _ = _scan(
        tmp_path,
        "--image",
        f"{PREFIX}vulnerable={FIXTURES / 'images' / 'vulnerable'}",
        "--image",
        f"{PREFIX}drift={FIXTURES / 'images' / 'drift'}",
        "--advisory-db",
        str(ADVISORY_DB),
    )
    located = {
        f["rule_id"]: f["location"]
        for image in report["images"]
        for f in image["findings"]
        if f["check"] in ("packages", "vulnerabilities")
    }
    assert (
        located["vuln.FIXTURE-2024-0001"]["repo_path"]
        == "tests/fixtures/images/vulnerable/requirements.lock"
    )
    assert located["packages.drift-version"]["line"] == 2
    sarif = json.loads((tmp_path / "scan" / "report.sarif").read_text())
    assert {r["ruleId"] for r in sarif["runs"][0]["results"]} >= {
        "vuln.FIXTURE-2024-0001",
        "packages.drift-version",
    }


def test_testkit_passes_and_says_what_was_not_checked(tmp_path: Path) -> None:
    code, report, stderr = _scan(tmp_path, "testkit", "--advisory-db", str(ADVISORY_DB))
    assert code == 0, stderr
    (image,) = report["images"]
    checks = {c["name"]: c for c in image["checks"]}
    assert image["verdict"] == "pass"
    assert checks["config"]["status"] == "passed"
    assert "entrypoint and command of testkit" in checks["config"]["summary"]
    assert checks["filesystem"]["status"] in ("passed", "findings")
    assert checks["filesystem"]["checked"] > 1000
    # No venv, no lock, no Python packages: nothing is claimed clean that was not looked at.
    assert checks["packages"]["status"] == "not_applicable"
    assert checks["vulnerabilities"]["status"] == "not_applicable"
    assert image["packages_checked"] == 0
    assert not [f for f in image["findings"] if f["severity"] in ("high", "critical")]
    assert report["advisory_db"]["path"] == str(ADVISORY_DB)
    sbom = json.loads(Path(image["sbom"]).read_text())
    assert sbom["specVersion"] == "1.5"
    assert any(c["name"] == "python3.11" for c in sbom["components"])


def test_scan_without_advisory_db_is_incomplete_and_exits_1_unless_allowed(tmp_path: Path) -> None:
    code, report, _ = _scan(tmp_path, "testkit")
    assert code == 1
    assert report["verdict"] == "incomplete"
    checks = {c["name"]: c for c in report["images"][0]["checks"]}
    assert checks["vulnerabilities"]["status"] == "skipped"
    code, _, _ = _scan(tmp_path, "testkit", "--allow-incomplete")
    assert code == 0


def test_sarif_format_on_stdout(tmp_path: Path) -> None:
    result = run_cli(
        [
            "images",
            "scan",
            "testkit",
            "--advisory-db",
            str(ADVISORY_DB),
            "--output",
            str(tmp_path),
            "--format",
            "sarif",
        ],
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["version"] == "2.1.0"


def test_missing_image_is_an_infrastructure_error(tmp_path: Path) -> None:
    code, _, stderr = _scan(
        tmp_path, "--image", f"{PREFIX}does-not-exist", "--advisory-db", str(ADVISORY_DB)
    )
    assert code == 6
    assert "not present" in stderr


def test_failing_build_reports_the_failing_step_and_its_log(api: Any) -> None:
    plan = images.ImagePlan("broken", f"{PREFIX}broken:latest")
    events: list[dict[str, Any]] = []
    with pytest.raises(images.BuildFailed) as info:
        images.build_one(api, FIXTURES, plan, {}, events.append)
    assert "exit 3" in info.value.details["step"]
    assert "fixture: about to fail" in info.value.details["log"]
    assert any(e["type"] == "progress" for e in events)


def test_images_build_streams_json_and_labels_revision(tmp_path: Path, api: Any) -> None:
    """`sandbox images build testkit` under a side prefix, so the pinned tags stay untouched."""
    try:
        result = run_cli(["images", "build", "testkit", "--json", "--prefix", PREFIX], timeout=600)
        assert result.returncode == 0, result.stderr
        events = [json.loads(line) for line in result.stdout.splitlines()]
        built = {e["image"]: e for e in events if e["type"] == "built"}
        assert list(built) == [f"{PREFIX}base:latest", f"{PREFIX}testkit:latest"]
        assert any(e["type"] == "progress" and e.get("fraction") for e in events)
        labels = api.inspect_image(f"{PREFIX}testkit:latest")["Config"]["Labels"]
        assert labels[images.LABEL_REVISION] == images.revision(ROOT, "testkit")
        assert (ROOT / images.CA_TARGET).is_file()
    finally:
        _remove(api, f"{PREFIX}testkit:latest")
        _remove(api, f"{PREFIX}base:latest")


def test_lock_check_fails_on_a_stale_pin_and_lock_rewrites_only_the_id(
    tmp_path: Path, api: Any
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    original = (ROOT / "policies" / "testkit.yaml").read_text()
    stale = "sha256:" + "0" * 64
    current = images.image_id(api, "sandbox/testkit:latest")
    text = original.replace(original.split('id: "')[1].split('"')[0], stale)
    (policies / "testkit.yaml").write_text(text)

    check = run_cli(["images", "lock", "--check"], policies=policies)
    assert check.returncode == 1
    assert f'-image: {{name: sandbox/testkit, id: "{stale}"}}' in check.stdout
    assert (policies / "testkit.yaml").read_text() == text  # --check writes nothing

    lock = run_cli(["images", "lock"], policies=policies)
    assert lock.returncode == 0, lock.stderr
    assert (policies / "testkit.yaml").read_text() == text.replace(stale, str(current))
    assert run_cli(["images", "lock", "--check"], policies=policies).returncode == 0


def test_lock_reports_an_unbuilt_image(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    text = (ROOT / "policies" / "testkit.yaml").read_text()
    (policies / "testkit.yaml").write_text(
        text.replace("name: sandbox/testkit", f"name: {PREFIX}never-built")
    )
    result = run_cli(["images", "lock", "--check"], policies=policies)
    assert result.returncode == 1
    assert "is not built" in result.stderr
    shutil.rmtree(policies)
