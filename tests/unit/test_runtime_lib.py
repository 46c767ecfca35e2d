"""The in-container runtime (sandbox/runtime_lib/sandbox_runtime.py), run by the host's Python in a
subprocess the way an image runs it: one request line on stdin, frames on stdout."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

LIB = Path(__file__).resolve().parents[2] / "sandbox" / "runtime_lib"


def run_script(
    body: str, request: dict[str, Any] | None = None
) -> tuple[int, list[dict[str, Any]]]:
    """Run ``body`` (which defines ``main``) under ``sandbox_runtime.run``; its frames."""
    script = "from sandbox_runtime import Context, ToolError, run\n"
    script += textwrap.dedent(body) + "\nrun(main)\n"
    line = json.dumps(request or {"run_id": "r1", "args": {}, "inputs": {}, "output_dir": None})
    done = subprocess.run(  # noqa: S603 - the host's own interpreter on a fixed script
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(LIB)!r})\n{script}"],
        input=(line + "\n").encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    frames = [json.loads(raw) for raw in done.stdout.splitlines() if raw.strip()]
    return done.returncode, frames


def test_a_return_value_is_the_result_frame() -> None:
    code, frames = run_script("def main(ctx):\n    return {'rows': 3}\n")
    assert code == 0
    assert frames == [{"type": "result", "payload": {"rows": 3}}]


def test_sys_exit_zero_before_main_returns_fails_the_run() -> None:
    # A definitions file or a library calling sys.exit(0) mid-run used to end the run "ok"
    # with no result and its partial outputs published as complete.
    code, frames = run_script(
        """
        import sys

        def main(ctx):
            ctx.progress("half way", 0.5)
            sys.exit(0)
        """
    )
    assert code == 1
    assert [f["type"] for f in frames] == ["progress", "error"]
    error = frames[-1]["error"]
    assert error["kind"] == "ToolError"
    assert "sys.exit(0)" in error["message"]
    assert error["details"] == {"type": "SystemExit", "code": 0}
    assert error["traceback"][-1]["function"] == "main"  # where the script exited


def test_sys_exit_with_a_status_says_so() -> None:
    code, frames = run_script("import sys\ndef main(ctx):\n    sys.exit('bad config')\n")
    assert code == 1
    error = frames[-1]["error"]
    assert "sys.exit('bad config')" in error["message"]
    assert error["details"]["code"] == "bad config"


def test_pandas_missing_values_are_null_not_a_datetime_or_text() -> None:
    # Stand-ins named like pandas' own: NaT is a datetime subclass whose isoformat() is "NaT"
    # (tagged {"$type": "datetime", "value": "NaT"}, not ISO-8601), NA has no JSON form ("<NA>").
    code, frames = run_script(
        """
        import datetime

        class NaTType(datetime.datetime):
            def __new__(cls):
                return datetime.datetime.__new__(cls, 1970, 1, 1)

            def isoformat(self, *args, **kwargs):
                return "NaT"

        class NAType:
            def __str__(self):
                return "<NA>"

        def main(ctx):
            return {"when": [datetime.datetime(2020, 1, 1), NaTType()], "n": NAType()}
        """
    )
    assert code == 0, frames
    assert frames[-1]["payload"] == {
        "when": [{"$type": "datetime", "value": "2020-01-01T00:00:00"}, None],
        "n": None,
    }


def test_a_tool_error_says_its_own_message_and_an_exception_names_its_type() -> None:
    # The kind already says ToolError: the message no longer starts "ToolError: ". An
    # unexpected exception keeps its type in front, which is what tells the reader what broke.
    _, frames = run_script("def main(ctx):\n    raise ToolError('orders.csv has no rows')\n")
    assert frames[-1]["error"]["message"] == "orders.csv has no rows"
    _, frames = run_script("def main(ctx):\n    return 1 / 0\n")
    assert frames[-1]["error"]["message"] == "ZeroDivisionError: division by zero"
    assert frames[-1]["error"]["details"] == {"type": "ZeroDivisionError"}


def test_tool_error_details_that_are_not_an_object_still_give_an_error_frame() -> None:
    # The frame's details must be an object: a list or a string used to make the whole error
    # frame invalid, so the coordinator passed it on as a stdout log line and the run failed
    # with "the tool exited with status 1", the tool's own message lost.
    _, frames = run_script("def main(ctx):\n    raise ToolError('bad rows', [3, 7])\n")
    error = frames[-1]["error"]
    assert error["message"] == "bad rows"
    assert error["details"] == {"value": [3, 7]}
    _, frames = run_script("def main(ctx):\n    raise ToolError('bad rows', 'see row 3')\n")
    assert frames[-1]["error"]["details"] == {"value": "see row 3"}


def test_an_exception_whose_str_fails_is_still_reported() -> None:
    # A custom exception whose __str__ reads an attribute its __init__ never set: the runtime
    # crashed formatting the message, and the run ended with no error frame at all.
    code, frames = run_script(
        """
        class RowError(Exception):
            def __str__(self):
                return self.row_text

        def main(ctx):
            raise RowError()
        """
    )
    assert code == 1
    error = frames[-1]["error"]
    assert error["message"] == "RowError: <exception str() failed>"
    assert error["details"] == {"type": "RowError"}
    assert error["traceback"][-1]["function"] == "main"


def test_a_large_stray_print_reaches_stderr_whole_when_the_pipe_takes_it_in_parts() -> None:
    # Under runsc, gVisor completes a pipe write above 64 KiB only in part, and the unbuffered
    # text stream the base image sets up (PYTHONUNBUFFERED) dropped the rest without a word: a
    # 200 KB print arrived as its first 65,536 characters. A signal interrupting a write to a
    # full pipe makes the host kernel do the same: the caller reads nothing for a moment while
    # a timer fires every few milliseconds.
    body = """
        import signal

        def main(ctx):
            signal.signal(signal.SIGALRM, lambda *_: None)
            signal.setitimer(signal.ITIMER_REAL, 0.005, 0.005)
            print("y" * 1_000_000)
            signal.setitimer(signal.ITIMER_REAL, 0)
            return {"ok": True}
        """
    script = "from sandbox_runtime import Context, ToolError, run\n"
    script += textwrap.dedent(body) + "\nrun(main)\n"
    request = {"run_id": "r1", "args": {}, "inputs": {}, "output_dir": None}
    proc = subprocess.Popen(  # noqa: S603 - the host's own interpreter on a fixed script
        [
            sys.executable,
            "-I",
            "-u",
            "-c",
            f"import sys; sys.path.insert(0, {str(LIB)!r})\n{script}",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write((json.dumps(request) + "\n").encode())
    proc.stdin.close()
    proc.stdin = None  # sent whole; communicate() only reads
    time.sleep(0.5)  # the print fills the pipe and blocks; the timer interrupts it
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert json.loads(out.splitlines()[-1]) == {"type": "result", "payload": {"ok": True}}
    assert err == b"y" * 1_000_000 + b"\n", f"{len(err)} bytes on stderr"
    # The stream stands in for the interpreter's own: same name, mode, encoding and errors.
    code, frames = run_script(
        "import sys\ndef main(ctx):\n"
        "    e, o = sys.stderr, sys.__stderr__\n"
        "    return [[s.name, s.mode, s.encoding, s.errors, s.fileno()] for s in (e, o)]\n"
    )
    ours, interpreters = frames[-1]["payload"]
    assert ours == interpreters


def test_arrays_become_lists_of_every_length() -> None:
    # A stand-in shaped like numpy's ndarray (and pandas' Series): item() converts only a
    # one-element array and raises for the rest, tolist() converts any. The runtime asked
    # item() first, so returning an array of 2 (or 0) elements failed the run with "ValueError:
    # can only convert an array of size 1", and one of 1 element lost its brackets.
    code, frames = run_script(
        """
        class ndarray:
            def __init__(self, values):
                self.values = values

            def item(self):
                if len(self.values) != 1:
                    raise ValueError("can only convert an array of size 1 to a Python scalar")
                return self.values[0]

            def tolist(self):
                return list(self.values)

        def main(ctx):
            return {"many": ndarray([1, 2.5]), "none": ndarray([]), "one": ndarray([7])}
        """
    )
    assert code == 0, frames
    assert frames[-1]["payload"] == {"many": [1, 2.5], "none": [], "one": [7]}


def test_an_exception_outside_exception_is_reported_too() -> None:
    # asyncio.CancelledError (and KeyboardInterrupt, GeneratorExit) derive from BaseException
    # only: one escaping main ended the run with no error frame, the reader left with "the tool
    # exited with status 1" and a traceback in the log lines.
    code, frames = run_script(
        """
        import asyncio

        async def fetch():
            raise asyncio.CancelledError("the fetch task was cancelled")

        def main(ctx):
            return asyncio.run(fetch())
        """
    )
    assert code == 1
    error = frames[-1]["error"]
    assert error["message"] == "CancelledError: the fetch task was cancelled"
    assert error["details"] == {"type": "CancelledError"}
    assert error["traceback"][-1]["function"] == "fetch"


@pytest.mark.parametrize(
    "body",
    [
        "def main(ctx):\n    raise ToolError('é' * 9000)\n",
        "def main(ctx):\n    def down(n):\n        return down(n + 1)\n    down(0)\n",
    ],
    ids=["long-message", "deep-traceback"],
)
def test_an_error_too_large_for_a_small_frame_limit_still_gets_its_frame(
    body: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With frame_kb: 4 (3,584 bytes for the script) the fallback cut the message to 4,096
    # characters, still over the limit: the tool's error was lost ("exited with status 1").
    monkeypatch.setenv("SANDBOX_MAX_FRAME_BYTES", "3584")
    code, frames = run_script(body)
    assert code == 1
    [error] = [f["error"] for f in frames if f["type"] == "error"]
    assert error["kind"] == "ToolError"
    assert error["message"]
    assert all(len(json.dumps(f, ensure_ascii=False).encode()) < 3584 for f in frames)


def test_a_log_line_to_an_unknown_stream_is_the_scripts_error() -> None:
    # It became an invalid frame, which reached the caller as a stdout line of raw JSON.
    code, frames = run_script("def main(ctx):\n    ctx.log('hi', stream='bogus')\n")
    assert code == 1
    [error] = [f["error"] for f in frames if f["type"] == "error"]
    assert "log stream must be 'stderr' or 'stdout'" in error["message"]
