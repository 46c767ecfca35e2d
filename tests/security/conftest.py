"""The attack suite's machinery: every hostile case (``cases.CASES``) runs once per runtime as
its own ``sandbox run`` process, several at a time, and the tests read the cached results.

Each run is observed from three sides: its frames (status, exit code, what the script saw from
inside), the engine (no container left with the run's label) and the host (a sentinel tree and
the input root unchanged, the coordinator's peak RSS bounded, no secret from the caller's
environment anywhere in the output or the audit log).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandbox.request import loads_strict
from tests.conftest import POLICIES, ROOT, image_id

from .cases import CASES, EXEC_RUNNER, HOSTILE_POLICIES, Case

RUNTIMES = [
    pytest.param("runc", id="runc"),
    pytest.param("runsc", id="runsc", marks=pytest.mark.runsc),
]
# Each case is a CLI process plus a container: two cores take about this many at once.
WORKERS = 4
# A CLI process (pydantic, jsonschema, PyYAML, simdjson) peaks near 50 MiB; streaming must not add
# much.
MAX_CLI_RSS_KB = 120 * 1024
CLI_TIMEOUT_S = 180
SECRET = f"hunter2-{uuid.uuid4().hex}"
HOSTILE_ENV = {
    "SECRET_TOKEN": SECRET,
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "*",
}


@dataclass
class RunResult:
    """One finished ``sandbox run``."""

    case: str
    returncode: int
    frames: list[dict[str, Any]]
    stdout: bytes
    stderr: str
    max_rss_kb: int
    elapsed_s: float
    output_dir: Path | None

    @property
    def exit(self) -> dict[str, Any]:
        return self.frames[-1]

    @property
    def run_id(self) -> str:
        return str(self.exit["run_id"])

    @property
    def result(self) -> Any:
        results = [f for f in self.frames if f["type"] == "result"]
        return results[-1]["payload"] if results else None

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [f["error"] for f in self.frames if f["type"] == "error"]

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == type_]

    def describe(self) -> str:
        tail = self.stderr[-2000:]
        return f"{self.case}: rc={self.returncode} exit={self.exit}\nstderr: {tail}"


def tree_digest(root: Path) -> dict[str, str]:
    """Path -> (mode, size, mtime, sha256) of every entry under root, links not followed."""
    digest = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        content = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        digest[str(path.relative_to(root))] = (
            f"{st.st_mode:o} {st.st_size} {st.st_mtime_ns} {content}"
        )
    return digest


@dataclass
class SecurityEnv:
    """One runtime's policies, roots and the pool running its cases."""

    runtime: str
    base: Path
    client: Any
    data_root: Path
    mount_root: Path
    sentinel: Path
    audit_log: Path
    policy_dirs: dict[str, Path] = field(default_factory=dict)
    _futures: dict[str, Future[RunResult]] = field(default_factory=dict)
    _pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(WORKERS))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    sentinel_before: dict[str, str] = field(default_factory=dict)
    data_before: dict[str, str] = field(default_factory=dict)

    # --- policies ----------------------------------------------------------------------------

    def base_policy(self) -> dict[str, Any]:
        data = yaml.safe_load((POLICIES / "testkit.yaml").read_text())
        data["image"]["id"] = image_id(self.client, data["image"]["name"])
        data["runtime"] = self.runtime
        data["inputs"] = {"allowed_roots": [str(self.data_root), str(self.mount_root)], "max": 4}
        data["output"] = {"required": False, "max_mb": 8}
        data["limits"] = {
            "timeout_s": 20,
            "memory_mb": 128,
            "cpus": 1.0,
            "pids": 64,
            "tmpfs_mb": 16,
            "stdout_mb": 16,
        }
        return dict(data)

    def policy_dir(self, variant: str) -> Path:
        with self._lock:
            if variant not in self.policy_dirs:
                self.policy_dirs[variant] = self._write_variant(variant)
            return self.policy_dirs[variant]

    def _write_variant(self, variant: str) -> Path:
        directory = self.base / "policies" / variant
        directory.mkdir(parents=True)
        data = self.base_policy()
        if variant == "default":
            text = yaml.safe_dump(data, sort_keys=False)
        elif variant == "var_run_root":
            data["inputs"]["allowed_roots"] = ["/var/run", "/run"]
            text = yaml.safe_dump(data, sort_keys=False)
        elif variant == "roomy":
            data["limits"]["memory_mb"] = 512
            text = yaml.safe_dump(data, sort_keys=False)
        elif variant == "exec":
            data["command"] = ["python3", "-c", EXEC_RUNNER]
            text = yaml.safe_dump(data, sort_keys=False)
        elif variant == "huge_memory":
            data["limits"]["memory_mb"] = 1024 * 1024
            text = yaml.safe_dump(data, sort_keys=False)
        else:
            text = HOSTILE_POLICIES[variant](yaml.safe_dump(data, sort_keys=False))
        (directory / "testkit.yaml").write_text(text)
        return directory

    # --- runs --------------------------------------------------------------------------------

    def result(self, name: str) -> RunResult:
        future = self.submit(name)
        return future.result(timeout=CLI_TIMEOUT_S + 60)

    def submit(self, name: str) -> Future[RunResult]:
        with self._lock:
            if name not in self._futures:
                self._futures[name] = self._pool.submit(self._run, name, CASES[name])
            return self._futures[name]

    def submit_all(self) -> None:
        # Slow cases first, so they overlap with the many quick ones.
        for name in sorted(CASES, key=lambda n: -CASES[n].cost):
            self.submit(name)

    def _argv(self, name: str, case: Case, out: Path | None) -> list[str]:
        argv = [sys.executable, "-m", "sandbox", "--policies", str(self.policy_dir(case.policy))]
        argv += ["--audit-log", str(self.audit_log), "run"]
        if case.argv is not None:
            argv += [a.format(data=self.data_root, mnt=self.mount_root) for a in case.argv]
            return argv
        argv += ["testkit", "--args", json.dumps(case.args)]
        for flag in case.flags:
            argv.append(flag.format(data=self.data_root, mnt=self.mount_root, out=out))
        return argv

    def _run(self, name: str, case: Case) -> RunResult:
        out = self.base / "outputs" / name / "out"
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = self._argv(name, case, out)
        stdout_path = self.base / "logs" / f"{name}.out"
        stderr_path = self.base / "logs" / f"{name}.err"
        stdout_path.parent.mkdir(exist_ok=True)
        began = time.monotonic()
        with stdout_path.open("wb") as so, stderr_path.open("wb") as se:
            proc = subprocess.Popen(  # noqa: S603 - our own CLI
                argv,
                stdin=subprocess.PIPE if case.stdin is not None else subprocess.DEVNULL,
                stdout=so,
                stderr=se,
                cwd=ROOT,
                env={**os.environ, **HOSTILE_ENV},
            )
            if case.stdin is not None:
                assert proc.stdin is not None
                proc.stdin.write(case.stdin)
                proc.stdin.close()
            status, peak_kb = _wait_with_peak(proc, CLI_TIMEOUT_S)
        elapsed = time.monotonic() - began
        stdout = stdout_path.read_bytes()
        frames = [json.loads(line) for line in stdout.splitlines() if line.startswith(b"{")]
        return RunResult(
            case=name,
            returncode=os.waitstatus_to_exitcode(status),
            frames=frames,
            stdout=stdout,
            stderr=stderr_path.read_text(errors="replace"),
            max_rss_kb=peak_kb,
            elapsed_s=elapsed,
            output_dir=out,
        )

    def wait_idle(self) -> None:
        """Block until every submitted case has finished."""
        with self._lock:
            futures = list(self._futures.values())
        for future in futures:
            future.result(timeout=CLI_TIMEOUT_S + 60)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _wait_with_peak(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, int]:
    """Wait for the CLI; return its wait status and peak RSS in KiB.

    The peak is VmHWM from /proc, polled: rusage's ru_maxrss would also count the memory of
    this (large) pytest process, which the child shares until it execs.
    """
    deadline = time.monotonic() + timeout
    peak = 0
    status_file = Path(f"/proc/{proc.pid}/status")
    while True:
        peak = max(peak, _vm_hwm_kb(status_file))
        pid, status = os.waitpid(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return status, peak
        if time.monotonic() > deadline:
            proc.kill()
            os.waitpid(proc.pid, 0)
            proc.returncode = -9
            pytest.fail(f"sandbox run did not end within {timeout}s: {proc.args!r}")
        time.sleep(0.02)


def _vm_hwm_kb(status_file: Path) -> int:
    try:
        text = status_file.read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


@pytest.fixture(scope="session", params=RUNTIMES)
def security_env(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    engine_error: str | None,
) -> Iterator[SecurityEnv]:
    runtime = str(request.param)
    if engine_error is not None:
        # The docker gate (tests/conftest.py) fails or skips each test; nothing to set up.
        yield SecurityEnv(runtime, Path("/nonexistent"), None, Path(), Path(), Path(), Path())
        return
    import docker

    client = docker.from_env(version="auto")
    base = tmp_path_factory.mktemp(f"security-{runtime}")
    data_root = base / "data"
    (data_root / "sub").mkdir(parents=True)
    (data_root / "sample.csv").write_text("id,name\n1,ada\n2,grace\n")
    (data_root / "sub" / "notes.txt").write_text("hello\n")
    (data_root / "link-out").symlink_to("/etc")
    (data_root / "link-in").symlink_to(data_root / "sample.csv")
    mount_root = base / "mnt"
    (mount_root / "inner").mkdir(parents=True)
    # A mount point inside an input dir: the engine (API 1.41) cannot make it read-only too.
    mounted = _mount_tmpfs(mount_root / "inner")
    sentinel = base / "sentinel"
    sentinel.mkdir()
    (sentinel / "secret.txt").write_text("do not touch\n")
    (sentinel / "dir").mkdir()
    (sentinel / "dir" / "nested.bin").write_bytes(os.urandom(1024))
    env = SecurityEnv(
        runtime=runtime,
        base=base,
        client=client,
        data_root=data_root,
        mount_root=mount_root,
        sentinel=sentinel,
        audit_log=base / "state" / "audit.jsonl",
    )
    env.sentinel_before = tree_digest(sentinel)
    env.data_before = tree_digest(data_root)
    env.submit_all()
    try:
        yield env
    finally:
        env.close()
        client.close()
        if mounted:
            subprocess.run(["umount", str(mount_root / "inner")], check=False)  # noqa: S607


def _mount_tmpfs(target: Path) -> bool:
    """Mount a small tmpfs (needs root, as in CI); without it the mount-point case would pass
    vacuously, so its test checks that the mount exists."""
    done = subprocess.run(  # noqa: S603, S607 - fixed command
        ["mount", "-t", "tmpfs", "-o", "size=1m", "sandbox-test", str(target)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def assert_host_invariants(env: SecurityEnv, result: RunResult) -> None:
    """After any run: no container with its label, host trees untouched, memory bounded, no
    secret leaked."""
    leftovers = env.client.containers.list(
        all=True, filters={"label": f"io.sandbox.run_id={result.run_id}"}, sparse=True
    )
    assert leftovers == [], f"{result.case}: container left behind"
    assert tree_digest(env.sentinel) == env.sentinel_before, f"{result.case}: sentinel changed"
    assert tree_digest(env.data_root) == env.data_before, f"{result.case}: input root changed"
    assert result.max_rss_kb < MAX_CLI_RSS_KB, (
        f"{result.case}: CLI peak RSS {result.max_rss_kb} KiB"
    )
    assert SECRET.encode() not in result.stdout, f"{result.case}: a host secret reached the output"
    # Every byte on stdout is a strict-JSON frame line; the run ends with exactly one exit frame.
    result.stdout.decode("utf-8")
    for line in result.stdout.splitlines():
        loads_strict(line)  # strict JSON: no NaN/Infinity ever reaches the caller
    assert [f["type"] for f in result.frames].count("exit") == 1
    assert result.frames[-1]["type"] == "exit"
    assert [f["seq"] for f in result.frames] == list(range(len(result.frames)))
    assert {f["run_id"] for f in result.frames} == {result.run_id}


def assert_exit(result: RunResult, status: str, code: int) -> dict[str, Any]:
    assert result.returncode == code, result.describe()
    assert result.exit["status"] == status, result.describe()
    return result.exit
