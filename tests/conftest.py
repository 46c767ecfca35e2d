"""Shared fixtures: the Docker gate, a policy directory pinned to the images built here, and the
CLI driven as a subprocess (the way callers use it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
LABEL_MANAGED = "io.sandbox.managed"
# Everything a testkit container may see in its environment: the image's, the policy's, ours.
IMAGE_ENV = frozenset(
    {
        "PATH",
        "HOSTNAME",
        "HOME",
        "LANG",
        "PYTHONPATH",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUNBUFFERED",
        "TESTKIT",
        "SANDBOX_MAX_FRAME_BYTES",
    }
)


def _engine_error() -> str | None:
    try:
        import docker

        client = docker.from_env(version="auto", timeout=10)
        client.ping()
        client.close()
    except Exception as exc:  # noqa: BLE001 - any failure means "no usable engine"
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session", autouse=True)
def _audit_log_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Runs made by tests keep their audit records in a temporary log, not the user's."""
    if os.environ.get("SANDBOX_AUDIT_LOG"):
        yield
        return
    os.environ["SANDBOX_AUDIT_LOG"] = str(tmp_path_factory.mktemp("state") / "audit.jsonl")
    try:
        yield
    finally:
        os.environ.pop("SANDBOX_AUDIT_LOG", None)


@pytest.fixture(scope="session")
def engine_error() -> str | None:
    return _engine_error()


@pytest.fixture(autouse=True)
def _docker_gate(request: pytest.FixtureRequest) -> None:
    """A ``docker``-marked test skips without an engine, or fails with SANDBOX_REQUIRE_DOCKER=1."""
    if request.node.get_closest_marker("docker") is None:
        return
    error = request.getfixturevalue("engine_error")
    if error is None:
        return
    if os.environ.get("SANDBOX_REQUIRE_DOCKER") == "1":
        pytest.fail(f"SANDBOX_REQUIRE_DOCKER=1 but the Docker engine is unreachable: {error}")
    pytest.skip(f"no Docker engine: {error}")


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    import docker

    client = docker.from_env(version="auto")
    yield client
    client.close()


def image_id(client: Any, name: str) -> str:
    return str(client.images.get(name).id)


@dataclass
class PolicyDir:
    """A temporary policy directory whose policies pin the images built on this machine."""

    path: Path
    roots: list[Path] = field(default_factory=list)

    def write(self, tool: str, data: dict[str, Any]) -> Path:
        target = self.path / f"{tool}.yaml"
        target.write_text(yaml.safe_dump(data, sort_keys=False))
        return target

    def read(self, tool: str) -> dict[str, Any]:
        return dict(yaml.safe_load((self.path / f"{tool}.yaml").read_text()))

    def update(self, tool: str, **changes: Any) -> None:
        data = self.read(tool)
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        self.write(tool, data)


def make_policy_dir(
    client: Any, tmp: Path, tools: list[str], roots: list[Path] | None = None
) -> PolicyDir:
    """Copies of the repository's policies for ``tools``, pinned to the local images, with
    input roots replaced by ``roots`` (absolute)."""
    pdir = PolicyDir(path=tmp / "policies", roots=roots or [])
    pdir.path.mkdir(parents=True, exist_ok=True)
    for tool in tools:
        data = yaml.safe_load((POLICIES / f"{tool}.yaml").read_text())
        data["image"]["id"] = image_id(client, data["image"]["name"])
        if roots is not None:
            data.setdefault("inputs", {})["allowed_roots"] = [str(r) for r in roots]
        pdir.write(tool, data)
    return pdir


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """An allowed input root with a small CSV and a sub-directory."""
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "sample.csv").write_text("id,name\n1,ada\n2,grace\n")
    (root / "sub" / "notes.txt").write_text("hello\n")
    return root


@pytest.fixture
def testkit_policies(docker_client: Any, tmp_path: Path, data_root: Path) -> PolicyDir:
    return make_policy_dir(docker_client, tmp_path, ["testkit"], roots=[data_root])


@dataclass
class CliResult:
    returncode: int
    frames: list[dict[str, Any]]
    stderr: str
    stdout: bytes

    @property
    def exit(self) -> dict[str, Any]:
        return self.frames[-1]

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == type_]

    @property
    def result(self) -> Any:
        results = self.of_type("result")
        return results[-1]["payload"] if results else None

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [f["error"] for f in self.of_type("error")]


def run_cli(
    args: list[str],
    *,
    policies: Path | None = None,
    stdin: bytes | None = None,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> CliResult:
    argv = [sys.executable, "-m", "sandbox"]
    if policies is not None:
        argv += ["--policies", str(policies)]
    proc = subprocess.run(
        argv + args,
        input=stdin,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
        cwd=ROOT,
    )
    # `run` prints only frames; other commands may print plain text (kept in .stdout).
    frames = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith(b"{")]
    return CliResult(proc.returncode, frames, proc.stderr.decode(errors="replace"), proc.stdout)


@pytest.fixture
def sandbox_run(
    testkit_policies: PolicyDir, request: pytest.FixtureRequest
) -> Callable[..., CliResult]:
    """``sandbox run testkit`` with the given args/options, against the pinned test policies.
    The run ids are kept on the test item (``sandbox_run_ids``) for leftover checks."""
    run_ids: list[str] = request.node.__dict__.setdefault("sandbox_run_ids", [])

    def run(
        args: dict[str, Any] | None = None,
        *extra: str,
        tool: str = "testkit",
        timeout: float = 120,
    ) -> CliResult:
        argv = ["run", tool]
        if args is not None:
            argv += ["--args", json.dumps(args)]
        result = run_cli(argv + list(extra), policies=testkit_policies.path, timeout=timeout)
        if result.frames:
            run_ids.append(result.exit["run_id"])
        return result

    return run


def containers_for_run(client: Any, run_id: str) -> list[Any]:
    # sparse: no inspect per container, which would race a concurrent removal (404).
    label = f"io.sandbox.run_id={run_id}"
    return list(client.containers.list(all=True, filters={"label": label}, sparse=True))


@pytest.fixture(scope="session", autouse=True)
def _sweep_orphans() -> Iterator[None]:
    """After the session, remove containers whose owning coordinator is gone (test leftovers)."""
    yield
    if shutil.which("docker") is None or _engine_error() is not None:
        return
    subprocess.run(
        [sys.executable, "-m", "sandbox", "reap"], capture_output=True, check=False, timeout=120
    )
