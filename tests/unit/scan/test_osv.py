"""OSV advisory parsing and matching: ECOSYSTEM ranges (introduced/fixed/last_affected),
explicit version lists, severities, and reading a database from a directory or a zip."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from packaging.version import Version

from sandbox.errors import InvalidRequest
from sandbox.scan.cvss import base_score, rating
from sandbox.scan.inventory import Dist, Inventory, PythonEnv
from sandbox.scan.model import AdvisoryDbInfo, CheckResult, Finding, OnlineInfo, Severity
from sandbox.scan.osv import (
    AdvisoryIndex,
    Affected,
    Event,
    in_range,
    is_affected,
    load_database,
    parse_record,
)
from sandbox.scan.vulns import check_vulnerabilities

ROOT = Path(__file__).resolve().parents[3]
FIXTURE_DB = ROOT / "tests" / "fixtures" / "advisory-db"
PYPA_DB = ROOT.parent / "shared" / "data" / "pypa-advisory-db"


def events(*pairs: tuple[str, str]) -> tuple[Event, ...]:
    return tuple(Event(kind, version) for kind, version in pairs)


@pytest.mark.parametrize(
    ("version", "expected"),
    [("0.1", True), ("1.2.3", True), ("1.2.4", False), ("2.0", False), ("1.2.4rc1", True)],
)
def test_introduced_zero_fixed_range_is_half_open(version: str, expected: bool) -> None:
    assert in_range(Version(version), events(("introduced", "0"), ("fixed", "1.2.4"))) is expected


@pytest.mark.parametrize(
    ("version", "expected"), [("0.9", False), ("1.0", True), ("1.5", True), ("1.5.1", False)]
)
def test_last_affected_is_inclusive(version: str, expected: bool) -> None:
    rng = events(("introduced", "1.0"), ("last_affected", "1.5"))
    assert in_range(Version(version), rng) is expected


@pytest.mark.parametrize(
    ("version", "expected"),
    [("1.1", True), ("1.6", False), ("2.1", True), ("2.5", False), ("3.0", False)],
)
def test_two_affected_windows_in_one_range(version: str, expected: bool) -> None:
    rng = events(("introduced", "1.0"), ("fixed", "1.5"), ("introduced", "2.0"), ("fixed", "2.5"))
    assert in_range(Version(version), rng) is expected


def test_introduced_without_fix_affects_everything_after() -> None:
    rng = events(("introduced", "2.0"))
    assert in_range(Version("99.0"), rng)
    assert not in_range(Version("1.9"), rng)


def test_explicit_versions_match_even_outside_ranges_and_by_normalized_form() -> None:
    entry = Affected(ranges=(), versions=frozenset({"1.0", "2.0rc1"}))
    assert is_affected("1.0", entry)
    assert is_affected("1.0.0", entry)  # PEP 440: 1.0 == 1.0.0
    assert is_affected("2.0c1", entry)  # normalizes to 2.0rc1
    assert not is_affected("1.1", entry)


def test_unparsable_versions_never_crash_matching() -> None:
    entry = Affected(
        ranges=(events(("introduced", "0"), ("fixed", "not a version")),), versions=frozenset()
    )
    assert is_affected("1.0", entry)  # the bad bound is skipped: introduced 0 still holds
    assert not is_affected(
        "garbage!", Affected(ranges=(events(("introduced", "0")),), versions=frozenset())
    )


def record(**extra: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": "TEST-1",
        "modified": "2024-01-01T00:00:00Z",
        "affected": [
            {
                "package": {"name": "Demo_Pkg", "ecosystem": "PyPI"},
                "ranges": [
                    {"type": "GIT", "repo": "x", "events": [{"introduced": "0"}, {"fixed": "abc"}]},
                    {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "2.0"}]},
                ],
            }
        ],
    }
    base.update(extra)
    return base


def test_parse_record_indexes_by_canonical_name_and_ignores_git_ranges() -> None:
    advisory = parse_record(record())
    assert advisory is not None
    assert list(advisory.affected) == ["demo-pkg"]
    assert advisory.fixed_versions("demo-pkg") == ["2.0"]
    assert len(advisory.affected["demo-pkg"][0].ranges) == 1


def test_withdrawn_and_non_pypi_records_are_dropped() -> None:
    assert parse_record(record(withdrawn="2024-02-01T00:00:00Z")) is None
    npm = record()
    npm["affected"] = [{"package": {"name": "left-pad", "ecosystem": "npm"}}]
    assert parse_record(npm) is None


def test_severity_from_cvss_vector_then_ghsa_label_else_unknown() -> None:
    cvss = parse_record(
        record(
            severity=[{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}]
        )
    )
    assert cvss is not None
    assert cvss.severity == Severity.CRITICAL
    assert cvss.score == 9.8
    ghsa = parse_record(record(database_specific={"severity": "MODERATE"}))
    assert ghsa is not None
    assert ghsa.severity == Severity.MEDIUM
    plain = parse_record(record())
    assert plain is not None
    assert plain.severity is None


@pytest.mark.parametrize(
    ("vector", "score"),
    [
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 9.8),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H", 10.0),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:C/C:L/I:L/A:N", 6.1),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H", 7.5),
        ("CVSS:3.0/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H", 7.8),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N", 0.0),
    ],
)
def test_cvss3_base_scores_match_the_specification(vector: str, score: float) -> None:
    assert base_score(vector) == score


def test_cvss_non_v3_vectors_give_no_score_and_ratings_follow_the_bands() -> None:
    assert base_score("AV:N/AC:L/Au:N/C:P/I:P/A:P") is None
    assert [rating(s) for s in (0.0, 0.1, 4.0, 7.0, 9.0)] == [
        Severity.INFO,
        Severity.LOW,
        Severity.MEDIUM,
        Severity.HIGH,
        Severity.CRITICAL,
    ]


def test_fixture_database_loads_with_its_date_and_skips_withdrawn() -> None:
    index, info = load_database(FIXTURE_DB)
    assert info.kind == "directory"
    assert info.advisories == 2  # FIXTURE-2024-0002 is withdrawn
    assert info.newest_modified == "2024-06-01T00:00:00Z"
    assert len(info.sha256) == 64
    assert [a.id for a in index.match("Vulnerable_Demo", "1.2.3")] == ["FIXTURE-2024-0001"]
    assert index.match("vulnerable-demo", "1.2.4") == []
    assert index.match("demo-pkg", "0.9")[0].severity == Severity.MEDIUM
    assert index.match("demo-pkg", "1.1.0") == []


def test_zip_database_in_osv_json_form_gives_the_same_matches(tmp_path: Path) -> None:
    archive = tmp_path / "all.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("TEST-1.json", json.dumps(record()))
        zf.writestr("broken.json", "{not json")
    index, info = load_database(archive)
    assert info.kind == "zip"
    assert info.advisories == 1
    assert info.skipped_records == 1
    assert [a.id for a in index.match("demo-pkg", "1.0")] == ["TEST-1"]


def test_database_path_that_is_neither_dir_nor_zip_is_a_usage_error(tmp_path: Path) -> None:
    bogus = tmp_path / "db.txt"
    bogus.write_text("x")
    with pytest.raises(InvalidRequest, match="neither a directory nor a zip"):
        load_database(bogus)


def test_git_checkout_commit_is_reported(tmp_path: Path) -> None:
    db = tmp_path / "db"
    (db / ".git" / "refs" / "heads").mkdir(parents=True)
    (db / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (db / ".git" / "refs" / "heads" / "main").write_text(
        "3ccb612573e2511ab5cad7dafecd838605c80cda\n"
    )
    (db / "vulns").mkdir()
    (db / "vulns" / "t.json").write_text(json.dumps(record()))
    _, info = load_database(db)
    assert info.commit == "3ccb612573e2511ab5cad7dafecd838605c80cda"


@pytest.mark.skipif(
    not PYPA_DB.is_dir(), reason="shared/data/pypa-advisory-db is not beside the checkout"
)
def test_real_pypa_database_matches_a_known_jinja2_advisory() -> None:
    index, info = load_database(PYPA_DB)
    assert info.advisories > 2000
    assert (info.newest_modified or "").startswith("2024-10")
    assert "PYSEC-2014-8" in {a.id for a in index.match("Jinja2", "2.7.1")}
    assert "PYSEC-2014-8" not in {a.id for a in index.match("jinja2", "2.7.2")}


def _inventory(*dists: tuple[str, str]) -> Inventory:
    env = PythonEnv("/opt/venvs/app", "3.11.2")
    return Inventory((env,), tuple(Dist(n, v, env.root, f"/m/{n}") for n, v in dists))


def _check(
    index: AdvisoryIndex | None,
    info: AdvisoryDbInfo | None,
    *dists: tuple[str, str],
    unknown: Severity = Severity.HIGH,
) -> tuple[CheckResult, list[Finding], int]:
    """The offline vulnerability check of ``dists``, with no lock-file locations."""
    return check_vulnerabilities(
        _inventory(*dists), index, {}, unknown, info, OnlineInfo(status="disabled")
    )


def test_vulnerability_check_without_database_claims_nothing() -> None:
    result, findings, checked = _check(None, None, ("demo-pkg", "0.1"))
    assert (result.status, findings, checked) == ("skipped", [], 0)
    assert "NOT checked" in result.summary


def test_vulnerability_check_with_nothing_installed_is_not_applicable_not_clean() -> None:
    index, info = load_database(FIXTURE_DB)
    result, _, checked = _check(index, info)
    assert result.status == "not_applicable"
    assert checked == 0


def test_advisory_without_severity_is_ranked_by_the_unknown_severity_option() -> None:
    index = AdvisoryIndex()
    advisory = parse_record(record())
    assert advisory is not None
    index.add(advisory)
    _, info = load_database(FIXTURE_DB)
    result, findings, checked = _check(index, info, ("demo-pkg", "1.0"), unknown=Severity.CRITICAL)
    assert result.status == "findings"
    assert checked == 1
    assert findings[0].severity == Severity.CRITICAL
    assert findings[0].properties["severity_source"] == "assumed"
    assert "ranked critical" in findings[0].message


def test_records_that_alias_each_other_are_one_finding_with_the_stated_severity(
    tmp_path: Path,
) -> None:
    # osv.dev's all.zip (and its service, under --online) carries a PYSEC record and the GHSA
    # record of the same vulnerability; the PYSEC one often states no severity.
    pysec = record(
        id="PYSEC-2024-1", aliases=["CVE-2024-1", "GHSA-aaaa-bbbb-cccc", "GHSA-zzzz-zzzz-zzzz"]
    )
    ghsa = record(
        id="GHSA-aaaa-bbbb-cccc",
        aliases=["CVE-2024-1"],
        database_specific={"severity": "MODERATE"},
    )
    # Only a third alias in common (as zope's PYSEC-2021-88 and -104): two vulnerabilities.
    other = record(id="PYSEC-2024-2", aliases=["CVE-2024-2", "GHSA-zzzz-zzzz-zzzz"])
    archive = tmp_path / "all.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for item in (pysec, ghsa, other):
            zf.writestr(f"{item['id']}.json", json.dumps(item))
    index, info = load_database(archive)
    _, findings, _ = _check(index, info, ("demo-pkg", "1.0"))
    assert sorted((f.properties["advisory"], f.severity) for f in findings) == [
        ("GHSA-aaaa-bbbb-cccc", Severity.MEDIUM),
        ("PYSEC-2024-2", Severity.HIGH),
    ]
