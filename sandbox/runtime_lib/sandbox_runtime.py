"""Protocol v1 inside the container: the stdlib-only runtime every tool script uses.

Copied into every image (``/opt/sandbox/lib``, on ``PYTHONPATH``). It reads the one request line
from stdin, moves file descriptor 1 aside so that stray prints (including those of C extensions
and child processes) land on stderr instead of the frame channel, encodes frames with tagged
values, and turns an uncaught exception into a structured ``error`` frame and exit status 1.

A script::

    from sandbox_runtime import Context, run

    def main(ctx: Context) -> dict:
        ctx.progress("reading", fraction=0.1)
        return {"rows": 3}

    if __name__ == "__main__":
        run(main)
"""

from __future__ import annotations

import base64
import datetime as _dt
import decimal
import io
import json
import math
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME_BYTES = 1024 * 1024
_MAX_DEPTH = 200
# pandas' missing-value markers, recognised by type name (this module imports no pandas): NaT is a
# datetime whose isoformat() is "NaT", NA would become the string "<NA>". Both are null in JSON.
_MISSING_TYPES = frozenset({"NaTType", "NAType"})


class ToolError(Exception):
    """Raise from a script to fail the run with a message and structured details."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


class FrameTooLarge(ValueError):
    """A frame would exceed the line limit; large data belongs in files under /output."""


def _tag_float(value: float) -> Any:
    if math.isnan(value):
        return {"$type": "float", "value": "NaN"}
    if math.isinf(value):
        return {"$type": "float", "value": "Infinity" if value > 0 else "-Infinity"}
    return value


def _tag_dataframe(frame: Any, depth: int) -> dict[str, Any]:
    columns = [str(c) for c in frame.columns]
    dtypes = {str(c): str(t) for c, t in frame.dtypes.items()}
    rows = frame.itertuples(index=False, name=None)
    data = [[to_jsonable(v, depth + 1) for v in row] for row in rows]
    return {"$type": "dataframe", "columns": columns, "dtypes": dtypes, "data": data}


def to_jsonable(value: Any, depth: int = 0) -> Any:  # noqa: C901, PLR0911 - one branch per type
    """Turn a Python value into strict JSON, tagging what JSON cannot hold."""
    if depth > _MAX_DEPTH:
        raise ValueError(f"value nested deeper than {_MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if type(value).__name__ in _MISSING_TYPES:
        return None
    if isinstance(value, float):
        return _tag_float(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v, depth + 1) for v in value]
    if isinstance(value, _dt.datetime):
        return {"$type": "datetime", "value": value.isoformat()}
    if isinstance(value, _dt.date):
        return {"$type": "date", "value": value.isoformat()}
    if isinstance(value, _dt.time):
        return {"$type": "time", "value": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {"$type": "decimal", "value": str(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$type": "bytes", "base64": base64.b64encode(bytes(value)).decode("ascii")}
    if hasattr(value, "columns") and hasattr(value, "dtypes") and hasattr(value, "itertuples"):
        return _tag_dataframe(value, depth)
    if hasattr(value, "isoformat") and hasattr(value, "to_pydatetime"):  # pandas Timestamp
        return to_jsonable(value.to_pydatetime(), depth + 1)
    # tolist() before item(): numpy's item() converts only one-element arrays (and pandas'
    # Series the same), where tolist() gives a list for an array and a scalar for a scalar.
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays and scalars, Series
        return to_jsonable(value.tolist(), depth + 1)
    if hasattr(value, "item") and callable(value.item):  # other scalar wrappers
        return to_jsonable(value.item(), depth + 1)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def traceback_frames(exc: BaseException) -> list[dict[str, Any]]:
    """The exception's traceback as ``[{file, line, function, code}]``, innermost last."""
    return [
        {"file": fs.filename, "line": fs.lineno, "function": fs.name, "code": fs.line or ""}
        for fs in traceback.extract_tb(exc.__traceback__)
    ]


class Context:
    """What a script gets: the request and the frame writers."""

    def __init__(self, request: dict[str, Any], channel: Any, max_frame_bytes: int) -> None:
        self.run_id: str = request.get("run_id", "")
        self.args: dict[str, Any] = request.get("args") or {}
        self.inputs: dict[str, str] = request.get("inputs") or {}
        self.output_dir: str | None = request.get("output_dir")
        self._channel = channel
        self.max_frame_bytes = max_frame_bytes

    def _emit(self, frame: dict[str, Any]) -> None:
        line = json.dumps(frame, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        data = line.encode("utf-8", "replace") + b"\n"
        if len(data) > self.max_frame_bytes:
            raise FrameTooLarge(
                f"{frame['type']} frame is {len(data)} bytes, over the "
                f"{self.max_frame_bytes}-byte line limit; write large data to a file under the "
                "output directory instead"
            )
        # A raw pipe write may be partial (seen under gVisor above 64 KiB): write it all.
        view = memoryview(data)
        while view:
            view = view[self._channel.write(view) :]
        self._channel.flush()

    def progress(self, message: str, fraction: float | None = None) -> None:
        frame: dict[str, Any] = {"type": "progress", "message": str(message)}
        if fraction is not None:
            frame["fraction"] = min(1.0, max(0.0, float(fraction)))
        self._emit(frame)

    def data(self, payload: Any) -> None:
        self._emit({"type": "data", "payload": to_jsonable(payload)})

    def result(self, payload: Any) -> None:
        self._emit({"type": "result", "payload": to_jsonable(payload)})

    def log(self, line: str, stream: str = "stderr") -> None:
        if stream not in ("stderr", "stdout"):
            # The coordinator would take the invalid frame for a plain stdout line.
            msg = f"log stream must be 'stderr' or 'stdout', not {stream!r}"
            raise ValueError(msg)
        self._emit({"type": "log", "stream": stream, "line": str(line)})

    def error(
        self, kind: str, message: str, exc: BaseException | None = None, details: Any = None
    ) -> None:
        encoded = to_jsonable(details if details is not None else {})
        error = {
            "kind": kind,
            "message": message,
            "traceback": traceback_frames(exc) if exc is not None else [],
            # The protocol's details are an object: anything else is kept under "value".
            "details": encoded if isinstance(encoded, dict) else {"value": encoded},
        }
        self._emit({"type": "error", "error": error})


def _take_frame_channel() -> Any:
    """Keep fd 1 for frames only: duplicate it privately and point fd 1 at stderr."""
    sys.stdout.flush()
    sys.stderr.flush()
    frame_fd = os.dup(1)
    os.dup2(2, 1)
    # A buffered stream writes whole: a pipe write may be partial (gVisor takes at most 64 KiB
    # at a time; a signal can cut one short), and the unbuffered one PYTHONUNBUFFERED (or -u)
    # gives ignores the count, so the rest of a large print was silently lost.
    old = sys.stderr
    raw = io.FileIO(2, "w", closefd=False)
    raw.name = old.name  # "<stderr>", as the interpreter names it
    sys.stderr = io.TextIOWrapper(
        io.BufferedWriter(raw),
        encoding=old.encoding,
        errors=old.errors,
        line_buffering=True,
    )
    sys.stderr.mode = "w"  # type: ignore[misc]  # as the interpreter's own sys.stderr has it
    sys.stdout = sys.stderr
    return os.fdopen(frame_fd, "wb", buffering=0)


def _read_request() -> dict[str, Any]:
    line = sys.stdin.buffer.readline()
    if not line.strip():
        return {}
    request = json.loads(line)
    if not isinstance(request, dict):
        raise ValueError("the request on stdin is not a JSON object")
    return request


def run(main: Callable[[Context], Any], request: dict[str, Any] | None = None) -> NoReturn:
    """Run ``main(ctx)``; its return value (unless None) becomes the ``result`` frame.

    ``request`` is for scripts that read the stdin line themselves before handing over.
    """
    channel = _take_frame_channel()
    max_bytes = int(os.environ.get("SANDBOX_MAX_FRAME_BYTES", DEFAULT_MAX_FRAME_BYTES))
    ctx = Context({}, channel, max_bytes)
    try:
        ctx = Context(request if request is not None else _read_request(), channel, max_bytes)
        outcome = main(ctx)
        if outcome is not None:
            ctx.result(outcome)
    except ToolError as exc:
        _report(ctx, "ToolError", exc, exc.details)
        _exit(1)
    except FrameTooLarge as exc:
        _report(ctx, "ProtocolError", exc, {})
        _exit(1)
    except Exception as exc:  # noqa: BLE001 - the script's own failure, reported as data
        _report(ctx, "ToolError", exc, {"type": type(exc).__qualname__})
        _exit(1)
    except SystemExit as exc:
        # The script (or code it loads) exited before main returned: the run did not finish,
        # whatever the status; exiting 0 here would publish partial outputs as a success.
        early = ToolError(
            f"the tool exited early: sys.exit({exc.code!r}) was called before main() returned "
            "(return a result or raise an exception to end a run)",
            {"type": "SystemExit", "code": exc.code},
        )
        _report(ctx, "ToolError", early.with_traceback(exc.__traceback__), early.details)
        _exit(1)
    except BaseException as exc:  # noqa: BLE001 - asyncio.CancelledError, KeyboardInterrupt, …
        _report(ctx, "ToolError", exc, {"type": type(exc).__qualname__})
        _exit(1)
    _exit(0)


def _report(ctx: Context, kind: str, exc: BaseException, details: Any) -> None:
    # A ToolError is the tool's own words (the kind names it); any other exception is named.
    named = kind == "ToolError" and not isinstance(exc, ToolError)
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not cost the error frame
        text = "<exception str() failed>"
    message = f"{type(exc).__name__}: {text}" if named else text
    traceback.print_exception(exc, file=sys.stderr)
    try:
        ctx.error(kind, message, exc, details)
    except (FrameTooLarge, ValueError):
        # Over the line limit (a long message, a deep traceback, large details; a policy's
        # frame_kb can be as low as 4): the message cut to fit, then the traceback dropped too.
        budget = min(4096, ctx.max_frame_bytes // 4)
        short = message.encode("utf-8", "replace")[:budget].decode("utf-8", "ignore")
        try:
            ctx.error(kind, short, exc, {})
        except (FrameTooLarge, ValueError):
            ctx.error(kind, short, None, {"traceback": "dropped: over the frame line limit"})


def _exit(code: int) -> NoReturn:
    # sys.exit, not os._exit: a tool's atexit handlers (e.g. closing a database) must still run.
    sys.stderr.flush()
    sys.exit(code)
