"""``sandbox run`` as a process, for requests refused before any engine call: every one ends
with exactly one exit frame, last, and the exit code that matches it (no Docker needed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sandbox.request import MAX_REQUEST_BYTES
from tests.conftest import ROOT, CliResult, run_cli


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"SANDBOX_AUDIT_LOG": str(tmp_path / "audit.jsonl")}


def assert_refused(result: CliResult, status: str, code: int) -> dict[str, Any]:
    assert result.returncode == code, result.stderr
    assert [f["type"] for f in result.frames] == ["error", "exit"]
    assert result.frames[-1]["status"] == status
    return result.frames[0]["error"]


def python_code(
    code: str, *, timeout: float = 60, **options: Any
) -> subprocess.CompletedProcess[bytes]:
    """``python -c CODE`` from the repository root, its output captured."""
    return subprocess.run(  # noqa: S603 - the host's own interpreter on the test's code
        [sys.executable, "-c", code],
        capture_output=True,
        cwd=ROOT,
        timeout=timeout,
        check=False,
        **options,
    )


def test_args_that_are_not_utf8_end_with_an_invalid_request(
    policy_dir: Path, env: dict[str, str]
) -> None:
    # The CLI once died of a UnicodeEncodeError here, with no frame at all.
    args = os.fsdecode(b'{"message": "\xff"}')
    result = run_cli(["run", "echo", "--args", args], policies=policy_dir, env=env)
    error = assert_refused(result, "invalid_request", 2)
    assert error["message"] == "--args is not valid UTF-8"


@pytest.mark.parametrize("how", ["args", "stdin"])
def test_a_number_that_overflows_is_an_invalid_request(
    policy_dir: Path, env: dict[str, str], how: str
) -> None:
    # 1e999 decoded to infinity and failed later, as an internal infrastructure error (exit 6).
    if how == "args":
        result = run_cli(["run", "echo", "--args", '{"n": 1e999}'], policies=policy_dir, env=env)
    else:
        request = b'{"tool": "echo", "args": {"n": 1e999}}'
        result = run_cli(["run", "--request", "-"], policies=policy_dir, stdin=request, env=env)
    error = assert_refused(result, "invalid_request", 2)
    assert "1e999 is out of range" in error["message"]


def test_args_file_errors_name_the_file_and_hold_the_request_cap(
    policy_dir: Path, env: dict[str, str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    result = run_cli(["run", "echo", "--args-file", str(bad)], policies=policy_dir, env=env)
    error = assert_refused(result, "invalid_request", 2)
    assert error["message"].startswith(f"--args-file {bad} is not valid JSON")
    big = tmp_path / "big.json"
    big.write_text('{"s": "' + "x" * MAX_REQUEST_BYTES + '"}')
    result = run_cli(["run", "echo", "--args-file", str(big)], policies=policy_dir, env=env)
    error = assert_refused(result, "invalid_request", 2)
    assert f"larger than {MAX_REQUEST_BYTES} bytes" in error["message"]


def test_a_request_on_stdin_refuses_other_options_even_zero(
    policy_dir: Path, env: dict[str, str]
) -> None:
    # `--timeout 0` was silently ignored (tested for truth, not for being given).
    result = run_cli(
        ["run", "--request", "-", "--timeout", "0"],
        policies=policy_dir,
        stdin=b'{"tool": "echo"}',
        env=env,
    )
    error = assert_refused(result, "invalid_request", 2)
    assert "cannot be combined" in error["message"]


@pytest.mark.parametrize("command", [["run", "echo"], ["tools"]])
def test_a_closed_stdout_is_a_usage_error_that_says_so(
    policy_dir: Path, env: dict[str, str], command: list[str]
) -> None:
    # `sandbox run … >&-` crashed with an AttributeError traceback; `tools` printed nothing
    # and exited 0.
    done = subprocess.run(  # noqa: S603 - the project's own CLI
        [sys.executable, "-m", "sandbox", "--policies", str(policy_dir), *command],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: os.close(1),  # noqa: PLW1509 - only closes fd 1, no threads yet
        env=env,
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert b"stdout is closed" in done.stderr
    assert b"Traceback" not in done.stderr


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_a_timeout_that_is_not_a_finite_number_is_invalid(
    policy_dir: Path, env: dict[str, str], value: str
) -> None:
    # `--timeout inf` was denied as "timeout infs is above the policy's 30s" (exit 3), where
    # the same value in a JSON request is an invalid request.
    result = run_cli(["run", "echo", f"--timeout={value}"], policies=policy_dir, env=env)
    error = assert_refused(result, "invalid_request", 2)
    assert "timeout_s" in error["message"]


def test_a_missing_policy_directory_is_named_with_the_fix(
    tmp_path: Path, env: dict[str, str]
) -> None:
    result = run_cli(["run", "echo"], policies=tmp_path / "nowhere", env=env)
    error = assert_refused(result, "denied", 3)
    assert "policy directory" in error["message"]
    assert "does not exist" in error["message"]
    assert "--policies" in error["details"]["fix"]


def _frames(out: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_the_request_is_read_ends_the_run_as_interrupted(
    policy_dir: Path, env: dict[str, str], signum: int
) -> None:
    # The caller never closes stdin: SIGINT once ended in a traceback and SIGTERM in silence.
    argv = [sys.executable, "-m", "sandbox", "--policies", str(policy_dir), "run"]
    proc = subprocess.Popen(
        [*argv, "--request", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **env},
        cwd=ROOT,
    )
    time.sleep(1.0)  # whether it is still starting or already reading, the outcome is the same
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=30)
    frames = _frames(out)
    assert proc.returncode == 130
    assert [f["type"] for f in frames] == ["error", "exit"]
    assert frames[-1]["status"] == "interrupted"
    assert frames[0]["error"]["kind"] == "Interrupted"


def test_a_signal_during_start_up_is_held_until_the_run_can_end_properly(
    policy_dir: Path, env: dict[str, str]
) -> None:
    # What `python -m sandbox run` does, with SIGTERM arriving during the imports.
    code = (
        "import os, signal, sys\n"
        "from sandbox import early_signals\n"
        "early_signals.hold()\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        f"sys.argv = ['sandbox', '--policies', {str(policy_dir)!r}, 'run', 'echo']\n"
        "from sandbox.cli import entrypoint\n"
        "entrypoint()\n"
    )
    proc = python_code(code, env={**os.environ, **env})
    frames = _frames(proc.stdout)
    assert proc.returncode == 130, proc.stderr
    assert [f["type"] for f in frames] == ["error", "exit"]
    assert frames[-1]["status"] == "interrupted"


def test_a_signal_during_a_log_call_does_not_deadlock_the_run() -> None:
    # The handler logged: a signal landing while the main thread was inside a log call (or
    # inside the handler's own log call, when two signals arrive together: a Ctrl-C the tty
    # and a wrapper both deliver) waited forever for the logger's lock; the process hung with
    # its container stopped but never removed, and no exit frame.
    code = (
        "import os, signal, threading\n"
        "from sandbox.cli import _install_interrupt, configure_logging\n"
        "from sandbox.log import logger\n"
        "configure_logging('text')\n"
        "cancel = threading.Event()\n"
        "_install_interrupt(cancel, {'reading': False, 'signal': 0})\n"
        "with logger._lock:  # a log call in progress on the main thread\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "print(cancel.is_set(), flush=True)\n"
    )
    proc = python_code(code, timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"True\n"


def test_commands_other_than_run_get_held_signals_back() -> None:
    code = (
        "import os, signal, sys\n"
        "from sandbox import early_signals\n"
        "early_signals.hold()\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "print('held', flush=True)\n"
        "early_signals.release()\n"
        "print('not reached', flush=True)\n"
    )
    proc = python_code(code)
    assert proc.returncode == -signal.SIGTERM
    assert proc.stdout == b"held\n"


def test_an_ignored_signal_stays_ignored() -> None:
    # `nohup sandbox run …`: SIGHUP must not stop the run.
    code = (
        "import os, signal\n"
        "from sandbox import early_signals\n"
        "early_signals.hold()\n"
        "os.kill(os.getpid(), signal.SIGHUP)\n"
        "print(early_signals.received(), flush=True)\n"
    )
    proc = python_code(
        code,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),  # noqa: PLW1509
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"[]\n"


def test_serve_answers_at_once_while_the_engine_never_does(tmp_path: Path) -> None:
    """An engine that accepts connections and never answers (hung dockerd) used to hold the
    server in its start-up reap for minutes before it read a single call; the reap and the
    pool's priming now run beside it."""
    import socket

    address = str(tmp_path / "hung.sock")
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hung.bind(address)
    hung.listen(16)
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "testkit.yaml").write_bytes((ROOT / "policies" / "testkit.yaml").read_bytes())
    env = {
        **os.environ,
        "DOCKER_HOST": f"unix://{address}",
        "SANDBOX_AUDIT_LOG": str(tmp_path / "audit.jsonl"),
    }
    argv = [sys.executable, "-m", "sandbox", "--policies", str(policies), "serve"]
    calls = [{"jsonrpc": "2.0", "id": 1, "method": "tools"}]
    calls.append({"jsonrpc": "2.0", "id": 2, "method": "shutdown"})
    try:
        # Far below the engine client's 60 s per call, let alone its retries.
        done = subprocess.run(
            argv,
            input=b"".join(json.dumps(c).encode() + b"\n" for c in calls),
            capture_output=True,
            env=env,
            timeout=30,
            check=False,
        )
    finally:
        hung.close()
    code = done.returncode
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert code == 0
    by_id = {a["id"]: a for a in answers if "id" in a}
    assert [tool["tool"] for tool in by_id[1]["result"]] == ["testkit"]
    assert by_id[2]["result"] == {}


def test_other_commands_name_the_fix_for_a_missing_policy_directory(
    tmp_path: Path, env: dict[str, str]
) -> None:
    # `sandbox tools` (the first command a user tries) said only "policies: policy directory
    # not found", where `run` says how to point at the policies.
    result = run_cli(["tools"], policies=tmp_path / "nowhere", env=env)
    assert result.returncode == 2
    assert "policy directory not found" in result.stderr
    assert "--policies DIR" in result.stderr
    assert "SANDBOX_POLICY_DIR" in result.stderr


def test_a_usage_error_is_a_json_log_line_when_json_logs_were_asked_for(
    policy_dir: Path, env: dict[str, str]
) -> None:
    # The parse failed before logging was set up, so the error was plain text on stderr.
    result = run_cli(["--log-format", "json", "tools", "--bogus"], policies=policy_dir, env=env)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    record = json.loads(line)["record"]
    assert record["level"]["name"] == "ERROR"
    assert "unrecognized arguments: --bogus" in record["message"]
