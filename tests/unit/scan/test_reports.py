"""A whole scan over a fake engine (inspect dict + a tar built here): verdicts, the JSON report,
SARIF 2.1.0 structure and the CycloneDX 1.5 SBOM."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest

from sandbox.scan.config import PolicyCommand
from sandbox.scan.model import ScanReport, Severity
from sandbox.scan.osv import load_database
from sandbox.scan.runner import ScanOptions, ScanTarget, iter_scans, verdict, write_outputs
from sandbox.scan.sarif import to_sarif
from sandbox.scan.sbom import parse_dpkg_status

from .tarbuild import TarBuilder, base_root

ROOT = Path(__file__).resolve().parents[3]
FIXTURE_DB = ROOT / "tests" / "fixtures" / "advisory-db"
IMAGE_ID = "sha256:" + "cd" * 32
DPKG = b"""Package: bash
Status: install ok installed
Architecture: amd64
Version: 5.2.15-2+b7

Package: removed-thing
Status: deinstall ok config-files
Version: 1.0

Package: libc6
Status: install ok installed
Architecture: amd64
Source: glibc
Version: 2.36-9+deb12u4
"""


class FakeSource:
    """``ImageSource`` over in-memory images."""

    def __init__(self, images: dict[str, tuple[dict[str, Any], bytes]]) -> None:
        self.images = images

    def inspect(self, image: str) -> dict[str, Any]:
        return self.images[image][0]

    @contextmanager
    def filesystem(self, image: str) -> Iterator[IO[bytes]]:
        yield io.BytesIO(self.images[image][1])


def inspect(user: str = "65532:65532") -> dict[str, Any]:
    return {
        "Id": IMAGE_ID,
        "Architecture": "amd64",
        "Config": {"User": user, "Env": ["PATH=/usr/bin:/bin"], "Labels": {"a": "b"}},
    }


def app_image(version: str = "1.2.3") -> TarBuilder:
    tar = base_root().file("var/lib/dpkg/status", DPKG).file("opt/tool/main.py", "x")
    site = tar.venv("/opt/venvs/app")
    tar.dist(site, "vulnerable-demo", version, ("demo-pkg>=1",))
    tar.dist(site, "demo-pkg", "1.1.0")
    return tar


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    d = tmp_path / "repo" / "images" / "app"
    d.mkdir(parents=True)
    (d / "Dockerfile").write_text("FROM scratch\nUSER 65532\n")
    (d / "requirements.lock").write_text("vulnerable-demo==1.2.3\ndemo-pkg==1.1.0\n")
    return d


def options(tmp_path: Path, with_db: bool = True, fail_on: Any = "high") -> ScanOptions:
    index, db = load_database(FIXTURE_DB) if with_db else (None, None)
    return ScanOptions(
        repo_root=tmp_path / "repo",
        output_dir=tmp_path / "out",
        fail_on=fail_on,
        index=index,
        db=db,
    )


def scan(tmp_path: Path, source_dir: Path, tar: TarBuilder, **kw: Any) -> ScanReport:
    source = FakeSource({"app:latest": (inspect(), tar.bytes())})
    target = ScanTarget(
        "app:latest",
        source_dir,
        (PolicyCommand("app", ("python3", "/opt/tool/main.py"), {}),),
        {"app": IMAGE_ID},
    )
    opts = options(tmp_path, **kw)
    return write_outputs(list(iter_scans(source, [target], opts)), opts)


def test_vulnerable_pin_fails_the_scan_and_points_at_the_lock_line(
    tmp_path: Path, source_dir: Path
) -> None:
    report = scan(tmp_path, source_dir, app_image())
    image = report.images[0]
    assert report.verdict == "fail"
    assert image.verdict == "fail"
    vuln = [f for f in image.findings if f.check == "vulnerabilities"]
    assert [f.rule_id for f in vuln] == ["vuln.FIXTURE-2024-0001"]
    assert vuln[0].severity == Severity.CRITICAL
    assert (vuln[0].location.repo_path, vuln[0].location.line) == (
        "images/app/requirements.lock",
        1,
    )
    assert image.packages_checked == 2
    assert report.advisory_db is not None
    assert report.advisory_db.newest_modified == "2024-06-01T00:00:00Z"


def test_fixed_version_passes_with_every_check_accounted_for(
    tmp_path: Path, source_dir: Path
) -> None:
    (source_dir / "requirements.lock").write_text("vulnerable-demo==1.2.4\ndemo-pkg==1.1.0\n")
    report = scan(tmp_path, source_dir, app_image("1.2.4"))
    image = report.images[0]
    statuses = {c.name: c.status for c in image.checks}
    assert statuses["vulnerabilities"] == "passed"
    assert statuses["packages"] == "passed"
    assert statuses["config"] == "passed"
    assert image.verdict in ("pass", "incomplete")  # dockerfile lint depends on hadolint


def test_without_a_database_the_scan_is_incomplete_never_clean(
    tmp_path: Path, source_dir: Path
) -> None:
    (source_dir / "requirements.lock").write_text("vulnerable-demo==1.2.4\ndemo-pkg==1.1.0\n")
    report = scan(tmp_path, source_dir, app_image("1.2.4"), with_db=False)
    checks = {c.name: c for c in report.images[0].checks}
    assert checks["vulnerabilities"].status == "skipped"
    assert report.verdict == "incomplete"
    assert report.advisory_db is None


def test_threshold_decides_the_verdict() -> None:
    from sandbox.scan.model import CheckResult, Finding

    checks = [CheckResult(name="x", status="findings", summary="")]
    medium = [Finding(rule_id="r", check="x", severity=Severity.MEDIUM, message="m")]
    assert verdict(checks, medium, "high") == "pass"
    assert verdict(checks, medium, "medium") == "fail"
    info = [Finding(rule_id="r", check="x", severity=Severity.INFO, message="m")]
    assert verdict(checks, info, "low") == "pass"
    assert verdict([CheckResult(name="x", status="error", summary="")], [], "low") == "incomplete"


def test_outputs_are_written_next_to_each_other(tmp_path: Path, source_dir: Path) -> None:
    report = scan(tmp_path, source_dir, app_image())
    out = tmp_path / "out"
    assert ScanReport.model_validate_json((out / "report.json").read_text()) == report
    assert (out / "app_latest.cdx.json").is_file()
    assert report.images[0].sbom == str(out / "app_latest.cdx.json")


def test_sarif_is_a_valid_2_1_0_log_with_located_results_and_rules(
    tmp_path: Path, source_dir: Path
) -> None:
    scan(tmp_path, source_dir, app_image())
    log = json.loads((tmp_path / "out" / "report.sarif").read_text())
    assert log["version"] == "2.1.0"
    assert log["$schema"].endswith("sarif-2.1.0.json")
    (run,) = log["runs"]
    rules = run["tool"]["driver"]["rules"]
    assert run["tool"]["driver"]["name"] == "sandbox-images-scan"
    assert len({r["id"] for r in rules}) == len(rules)
    for result in run["results"]:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["level"] in ("error", "warning", "note")
        assert result["message"]["text"].startswith("[app:latest]")
        location = result["locations"][0]["physicalLocation"]
        assert location["artifactLocation"]["uri"].startswith("images/app/")
        assert location["region"]["startLine"] >= 1
        assert len(result["partialFingerprints"]["sandboxFinding/v1"]) == 64
    vuln_rule = next(r for r in rules if r["id"] == "vuln.FIXTURE-2024-0001")
    assert vuln_rule["properties"]["security-severity"] == "9.8"
    assert vuln_rule["helpUri"].startswith("https://")


def test_sarif_of_an_empty_report_has_one_run_and_no_results() -> None:
    from sandbox.scan.model import OnlineInfo

    report = ScanReport(
        generated_at="2024-01-01T00:00:00Z",
        scanner="t",
        fail_on="high",
        advisory_db=None,
        online=OnlineInfo(status="disabled"),
        images=[],
        verdict="pass",
    )
    log = to_sarif(report, {})
    assert log["runs"][0]["results"] == []
    assert log["runs"][0]["tool"]["driver"]["rules"] == []


def test_sbom_is_cyclonedx_1_5_with_python_and_debian_components(
    tmp_path: Path, source_dir: Path
) -> None:
    report = scan(tmp_path, source_dir, app_image())
    sbom = json.loads(Path(report.images[0].sbom or "").read_text())
    assert (sbom["bomFormat"], sbom["specVersion"]) == ("CycloneDX", "1.5")
    assert sbom["metadata"]["component"]["type"] == "container"
    assert sbom["metadata"]["component"]["version"] == IMAGE_ID
    purls = {c["purl"] for c in sbom["components"]}
    assert "pkg:pypi/vulnerable-demo@1.2.3" in purls
    assert "pkg:deb/debian/bash@5.2.15-2%2Bb7?arch=amd64&distro=debian-12" in purls
    assert not any("removed-thing" in p for p in purls)
    deps = {d["ref"]: d["dependsOn"] for d in sbom["dependencies"]}
    assert deps["pkg:pypi/vulnerable-demo@1.2.3#/opt/venvs/app"] == [
        "pkg:pypi/demo-pkg@1.1.0#/opt/venvs/app"
    ]
    refs = [c["bom-ref"] for c in sbom["components"]]
    assert len(refs) == len(set(refs))
    _validate_cyclonedx(json.dumps(sbom))


def _validate_cyclonedx(text: str) -> None:
    """Strict schema validation when cyclonedx-python-lib (a dev dependency) is installed."""
    try:
        from cyclonedx.schema import SchemaVersion
        from cyclonedx.validation.json import JsonStrictValidator
    except ImportError:
        return
    validator = JsonStrictValidator(SchemaVersion.V1_5)
    assert validator.validate_str(text) is None
    # The validator really validates: a wrong component type is rejected.
    broken = json.loads(text)
    broken["components"][0]["type"] = "not-a-type"
    assert validator.validate_str(json.dumps(broken)) is not None


def test_dpkg_status_keeps_only_installed_packages() -> None:
    names = [p.name for p in parse_dpkg_status(DPKG)]
    assert names == ["bash", "libc6"]
