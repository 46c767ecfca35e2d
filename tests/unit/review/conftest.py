"""Review-tooling fixtures: the fixture policy sets, a host view with a private home, golden
files and the ``sandbox policy`` CLI driven in-process (no Docker anywhere)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandbox.cli import build_parser
from sandbox.errors import SandboxError
from sandbox.review.roots import Host

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
GOLDEN = HERE / "golden"
ROOT = HERE.parents[2]
IMAGE_ID = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
UPDATE_GOLDEN = os.environ.get("SANDBOX_UPDATE_GOLDEN") == "1"


def clean_policy(tool: str, **overrides: Any) -> dict[str, Any]:
    """A policy that passes every rule; overrides replace whole top-level keys."""
    data: dict[str, Any] = {
        "version": 1,
        "tool": tool,
        "image": {"name": "sandbox/fixture", "id": IMAGE_ID},
        "command": ["python3", "/opt/tool/main.py"],
        "args_schema": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"name": {"type": "string", "maxLength": 64}},
        },
        "limits": {
            "timeout_s": 60,
            "memory_mb": 512,
            "cpus": 1.0,
            "pids": 128,
            "tmpfs_mb": 64,
            "stdout_mb": 64,
        },
    }
    data.update(overrides)
    return data


def write_policy(directory: Path, tool: str, **overrides: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{tool}.yaml"
    path.write_text(yaml.safe_dump(clean_policy(tool, **overrides), sort_keys=False))
    return path


@pytest.fixture
def host(tmp_path: Path) -> Host:
    """A host view whose home is a fresh directory and that knows no Docker socket."""
    home = tmp_path / "home"
    home.mkdir()
    return Host(home=home)


def assert_golden(name: str, text: str) -> None:
    """Compare with ``golden/NAME``; SANDBOX_UPDATE_GOLDEN=1 rewrites it (review the diff)."""
    path = GOLDEN / name
    if UPDATE_GOLDEN:
        path.write_text(text)
    expected = path.read_text()
    assert text == expected, f"{name} differs; rerun with SANDBOX_UPDATE_GOLDEN=1 and review"


CliRunner = Callable[..., tuple[int, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> CliRunner:
    """``sandbox ARGV`` in-process: (exit code, stdout). Logging is left unconfigured."""

    def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        args = build_parser().parse_args(list(argv))
        try:
            code = int(args.handler(args))
        except SandboxError as exc:
            code = exc.exit_code
        return code, capsys.readouterr().out

    return run
