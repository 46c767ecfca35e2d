"""Fixtures for the tools tier: the four data-tool policies pinned to the images built here, and
the demo pipeline (ingest → dbt → Dagster/EDA) run once per session through the real CLI.

Every run goes through ``python -m sandbox run`` as a subprocess, the way callers use it. The
pipeline steps are session-scoped so later tools consume earlier outputs without re-running them;
that keeps the tier to about one run per scenario.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, CliResult, PolicyDir, _engine_error, make_policy_dir, run_cli

TOOLS = {
    "pyairbyte_ingest": "pyairbyte",
    "dbt_transform": "dbt",
    "dagster_orchestrate": "dagster",
    "eda_analyze": "eda",
}
EXAMPLES = ROOT / "examples"
# One tool run may take a while on a busy 2-core CI machine (PyAirbyte's import alone is ~6 s).
RUN_TIMEOUT = 240.0


def _require_engine_and_images() -> Any:
    """Skip (or fail with SANDBOX_REQUIRE_DOCKER=1) without an engine; fail on a missing image.

    Session fixtures run before the function-scoped Docker gate, so they check for themselves.
    """
    error = _engine_error()
    if error is not None:
        if os.environ.get("SANDBOX_REQUIRE_DOCKER") == "1":
            pytest.fail(f"SANDBOX_REQUIRE_DOCKER=1 but the Docker engine is unreachable: {error}")
        pytest.skip(f"no Docker engine: {error}")
    import docker

    client = docker.from_env(version="auto")
    missing = []
    for image in TOOLS.values():
        try:
            client.images.get(f"sandbox/{image}")
        except docker.errors.ImageNotFound:
            missing.append(image)
    if missing:
        hint = "sandbox images build " + " ".join(missing)
        pytest.fail(f"tool images not built: {', '.join(missing)} (build: {hint})")
    return client


@pytest.fixture(scope="session")
def tools_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's allowed input root: outputs of earlier steps and broken fixtures live here."""
    return tmp_path_factory.mktemp("tools")


@pytest.fixture(scope="session")
def tool_policies(tools_root: Path) -> PolicyDir:
    """Copies of the four policies with ``image.id`` set to the locally built images and
    ``inputs.allowed_roots`` set to the session root and the repository's examples/."""
    client = _require_engine_and_images()
    try:
        return make_policy_dir(client, tools_root, list(TOOLS), roots=[tools_root, EXAMPLES])
    finally:
        client.close()


@dataclass
class ToolRun:
    """One CLI run and where its outputs went."""

    cli: CliResult
    output: Path | None

    @property
    def status(self) -> str:
        return str(self.cli.exit["status"])

    @property
    def result(self) -> Any:
        return self.cli.result

    @property
    def outputs(self) -> dict[str, dict[str, Any]]:
        return {entry["path"]: entry for entry in self.cli.exit.get("outputs", [])}

    def explain(self) -> str:
        """Context for a failed assertion: the error frames and the end of stderr."""
        return (
            json.dumps(self.cli.errors, indent=1)[:4000]
            + "\n--- stderr ---\n"
            + self.cli.stderr[-4000:]
        )


RunTool = Callable[..., ToolRun]


def tool_runner(policies: Path, root: Path) -> RunTool:
    """``sandbox run TOOL --args JSON --input NAME=PATH... --output DIR`` against ``policies``;
    ``output`` is a fresh directory name under ``root`` (None: no output)."""

    def run(
        tool: str,
        args: dict[str, Any] | None = None,
        *,
        inputs: dict[str, Path] | None = None,
        output: str | None = None,
        raw_args: str | None = None,
    ) -> ToolRun:
        argv = ["run", tool]
        if raw_args is not None:
            argv += ["--args", raw_args]
        elif args is not None:
            argv += ["--args", json.dumps(args)]
        for name, path in (inputs or {}).items():
            argv += ["--input", f"{name}={path}"]
        out_dir = root / output if output else None
        if out_dir is not None:
            argv += ["--output", str(out_dir)]
        cli = run_cli(argv, policies=policies, timeout=RUN_TIMEOUT)
        return ToolRun(cli, out_dir)

    return run


@pytest.fixture(scope="session")
def run_tool(tool_policies: PolicyDir, tools_root: Path) -> RunTool:
    """``tool_runner`` against the pinned policies and the session root."""
    return tool_runner(tool_policies.path, tools_root)


# The demo pipeline, once per session: each step consumes the previous step's output directory.


@pytest.fixture(scope="session")
def ingest(run_tool: RunTool) -> ToolRun:
    args = {
        "source": "source-faker",
        "config": {"count": 200, "seed": 42},
        "database": "ingest.duckdb",
    }
    return run_tool("pyairbyte_ingest", args, output="ingest")


def build_example_project(run: RunTool, ingest: ToolRun, output: str) -> ToolRun:
    """``dbt build`` of the example project over what ``ingest`` wrote."""
    assert ingest.status == "ok", ingest.explain()
    assert ingest.output is not None
    return run(
        "dbt_transform",
        {"command": "build"},
        inputs={"project": EXAMPLES / "dbt_project", "source_db": ingest.output},
        output=output,
    )


@pytest.fixture(scope="session")
def dbt_build(run_tool: RunTool, ingest: ToolRun) -> ToolRun:
    return build_example_project(run_tool, ingest, "dbt")
