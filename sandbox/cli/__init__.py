"""The command line: the only package that parses argv, configures logging and picks exit
codes. One module per command group registers its subcommands (``register(commands)``);
this module wires them and owns ``run``, ``tools`` and ``reap``.

stdout carries frames (or a command's own report) only; human logs go to stderr.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn

from .. import __version__, early_signals
from ..errors import EXIT_CODES, Interrupted, InvalidRequest, SandboxError
from ..frames import Frame, encode
from ..log import level_number, logger
from ..request import MAX_REQUEST_BYTES, Request, loads_request, parse_request, request_from_data

if TYPE_CHECKING:
    from ..coordinator import Coordinator  # imported by the commands that use it, not here

Handler = Callable[[argparse.Namespace], int]


class UsageError(InvalidRequest):
    """argv does not parse."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        msg = f"{self.prog}: {message}"
        raise UsageError(msg)


def configure_logging(fmt: str, level: str = "INFO") -> None:
    logger.configure(fmt, level)


def _log_level(value: str) -> str:
    try:
        level_number(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return value.upper()


def count_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            msg = f"expected an integer >= {minimum}, got {text!r}"
            raise argparse.ArgumentTypeError(msg)
        return value

    return parse


def policy_dir(args: argparse.Namespace) -> Path:
    return Path(args.policies or os.environ.get("SANDBOX_POLICY_DIR") or "policies")


def audit_log(args: argparse.Namespace) -> Any:
    """The run audit log: ``--audit-log``, else $SANDBOX_AUDIT_LOG, else the state dir."""
    from .. import hostcheck
    from ..audit import AuditLog, caller_info, default_path

    path = Path(args.audit_log) if getattr(args, "audit_log", None) else default_path()
    return AuditLog(path, caller_info(hostcheck.parent_name()))


# --- run --------------------------------------------------------------------------------------


def _request_from_args(args: argparse.Namespace) -> Request:
    if args.request is not None:
        if args.request != "-":
            msg = "--request takes '-' (the request is read from stdin)"
            raise UsageError(msg)
        others = (args.tool, args.args, args.args_file, args.input, args.output, args.timeout)
        if any(value is not None for value in others):
            msg = "--request - cannot be combined with TOOL or other run options"
            raise UsageError(msg)
        # At most one byte over the cap: a larger request is refused without reading it all.
        return parse_request(sys.stdin.buffer.read(MAX_REQUEST_BYTES + 1))
    if not args.tool:
        msg = "run needs TOOL (or --request -)"
        raise UsageError(msg)
    return request_from_data(
        {
            "tool": args.tool,
            "args": _args_value(args),
            "inputs": _inputs_value(args.input or []),
            "output_dir": args.output,
            "timeout_s": args.timeout,
        }
    )


def _args_value(args: argparse.Namespace) -> Any:
    if args.args is not None and args.args_file is not None:
        msg = "use --args or --args-file, not both"
        raise UsageError(msg)
    if args.args_file is not None:
        source = f"--args-file {args.args_file}"
        try:
            with Path(args.args_file).open("rb") as fh:
                text = fh.read(MAX_REQUEST_BYTES + 1)
        except OSError as exc:
            msg = f"{source}: {exc.strerror}"
            raise InvalidRequest(msg) from exc
    elif args.args is not None:
        source = "--args"
        try:
            text = args.args.encode()
        except UnicodeEncodeError:
            msg = "--args is not valid UTF-8"
            raise InvalidRequest(msg, key="args", fix="pass UTF-8 text") from None
    else:
        return {}
    if len(text) > MAX_REQUEST_BYTES:
        msg = f"{source} is larger than {MAX_REQUEST_BYTES} bytes"
        raise InvalidRequest(msg, key="args", fix="large data belongs in an input file")
    try:
        return loads_request(text)
    except (ValueError, RecursionError) as exc:
        msg = f"{source} is not valid JSON: {exc}"
        raise InvalidRequest(msg, key="args") from exc


def _inputs_value(pairs: Iterable[str]) -> dict[str, str]:
    inputs: dict[str, str] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            msg = f"--input {pair!r}: expected NAME=PATH"
            raise UsageError(msg)
        if name in inputs:
            msg = f"--input {name!r} given twice"
            raise UsageError(msg)
        inputs[name] = path
    return inputs


def write_batches(batches: Iterable[list[Frame]], out: BinaryIO) -> Frame:
    """Write each batch of frames, one line each, with one flushed write; return the last
    frame (the exit frame)."""
    last: Frame = {}
    for batch in batches:
        out.write(b"".join([encode(frame) for frame in batch]))  # one line: itself, no copy
        out.flush()
        last = batch[-1]
    return last


INTERRUPTED_EARLY = "interrupted before the run started; no container was created"


def _install_interrupt(cancel: threading.Event, state: dict[str, int]) -> None:
    """SIGINT, SIGTERM and SIGHUP stop the run: its container is removed and it ends with an
    exit frame. While the request is read from stdin (which may never close) the read is
    broken off instead. The signal is noted in ``state["signal"]`` for ``cmd_run`` to log."""

    # No logging here: a handler may interrupt a log call holding the logger's lock (its own,
    # when two signals arrive together), and would wait for that lock forever.
    def handle(signum: int, _frame: FrameType | None) -> None:
        state["signal"] = state["signal"] or signum
        cancel.set()
        if state["reading"]:
            state["reading"] = False
            raise Interrupted(INTERRUPTED_EARLY)

    early_signals.handle(handle)
    held = early_signals.received()
    if held:
        state["signal"] = held[0]
        cancel.set()


def _read_request(
    args: argparse.Namespace, cancel: threading.Event, state: dict[str, int]
) -> Request | SandboxError:
    _install_interrupt(cancel, state)
    try:
        state["reading"] = True  # before the check: a signal from now on breaks the read
        if cancel.is_set():
            raise Interrupted(INTERRUPTED_EARLY)
        request = _request_from_args(args)
        state["reading"] = False  # one store: a signal after it only sets `cancel`
    except SandboxError as exc:
        state["reading"] = False
        return exc
    return request


def cmd_run(args: argparse.Namespace) -> int:
    from ..coordinator import Coordinator
    from ..docker_runtime import DockerRuntime

    cancel = threading.Event()
    state = {"reading": False, "signal": 0}
    request = _read_request(args, cancel, state)
    coordinator = Coordinator(
        runtime=DockerRuntime(), policy_dir=policy_dir(args), audit=audit_log(args)
    )
    collect_garbage_again()
    widen_pipe(sys.stdout.buffer)
    batches = coordinator.run_batches(request, cancel=cancel)
    last = write_batches(_reaping_once_started(batches, coordinator), sys.stdout.buffer)
    if state["signal"]:
        logger.warning("received signal {}: the run was stopped", state["signal"])
    return EXIT_CODES.get(last.get("status", "infrastructure_error"), 6)


def _reaping_once_started(
    batches: Iterable[list[Frame]], coordinator: Coordinator
) -> Iterator[list[Frame]]:
    """The run's batches; once its container has started, leftovers of dead coordinators are
    removed in a thread beside the run, joined once the last batch is written.

    Not before the run, nor from its start: the run never needs them gone (the reaper spares
    live owners, this process included), and until the container runs this process is on the
    critical path (imports, validation, create, start), where a second thread's engine calls
    and /proc reads contend for the interpreter lock. Once the container has started, the run
    mostly waits for its first output (~50 ms)."""
    reaper: threading.Thread | None = None
    try:
        for batch in batches:
            yield batch
            if reaper is None and any(frame["type"] == "started" for frame in batch):
                reaper = threading.Thread(target=_reap_quietly, args=(coordinator,), name="reap")
                reaper.start()
    finally:
        if reaper is not None:
            reaper.join()


def collect_garbage_again() -> None:
    """Switch the garbage collector back on (``sandbox.__main__`` starts without it); what
    start-up made is frozen first, so that collections never scan it."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def widen_pipe(out: BinaryIO) -> None:
    """A stdout pipe with 1 MiB of buffer (``stdout_pipe.widen``)."""
    try:
        fd = out.fileno()
    except (OSError, ValueError, AttributeError):
        return  # no file descriptor: nothing to widen
    from ..stdout_pipe import widen

    widen(fd)


def _reap_quietly(coordinator: Coordinator) -> None:
    try:
        removed = coordinator.reap()
    except SandboxError as exc:
        logger.debug("reap skipped: {}", exc)
        return
    if removed:
        logger.info("reaped {} container(s) left by coordinators that are gone", len(removed))


# --- tools, reap ------------------------------------------------------------------------------


def cmd_tools(args: argparse.Namespace) -> int:
    from ..policy import tool_rows

    rows = tool_rows(policy_dir(args))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['tool']:<22} {row['image']:<20} {row['description']}")
    return 0


def cmd_reap(args: argparse.Namespace) -> int:
    from ..coordinator import Coordinator
    from ..docker_runtime import DockerRuntime

    coordinator = Coordinator(runtime=DockerRuntime(), policy_dir=policy_dir(args))
    removed = coordinator.reap()
    for container_id in removed:
        print(container_id)
    logger.info("removed {} container(s)", len(removed))
    return 0


# --- wiring -----------------------------------------------------------------------------------


# Global options that take a value (the word after them is not the command).
_GLOBAL_VALUE_OPTIONS = frozenset({"--policies", "--log-format", "--audit-log", "--log-level"})
# Commands this module owns: their parsing needs none of the other command groups.
_BUILTIN_COMMANDS = frozenset({"run", "tools", "reap"})


def _command_of(argv: Sequence[str]) -> str | None:
    """The command word of argv (the first word that is neither an option nor its value)."""
    words = iter(argv)
    for word in words:
        if word in _GLOBAL_VALUE_OPTIONS:
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def build_parser(*, extensions: bool = True) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sandbox",
        description="Run whitelisted data-tool scripts in hardened, short-lived Docker containers.",
    )
    parser.add_argument("--version", action="version", version=f"sandbox {__version__}")
    parser.add_argument(
        "--policies",
        metavar="DIR",
        help="policy directory (default $SANDBOX_POLICY_DIR or ./policies)",
    )
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    parser.add_argument(
        "--audit-log",
        metavar="PATH",
        help="audit log of runs (default $SANDBOX_AUDIT_LOG, else "
        "$XDG_STATE_HOME/sandbox/audit.jsonl or ~/.local/state/sandbox/audit.jsonl)",
    )
    parser.add_argument(
        "--log-level",
        type=_log_level,
        default=os.environ.get("SANDBOX_LOG_LEVEL", "INFO"),
        help="TRACE, DEBUG, INFO (default; $SANDBOX_LOG_LEVEL), WARNING, ERROR or CRITICAL",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="one run; frames on stdout")
    run.add_argument("tool", nargs="?", metavar="TOOL")
    run.add_argument("--args", metavar="JSON")
    run.add_argument("--args-file", metavar="F")
    run.add_argument("--input", action="append", metavar="NAME=PATH")
    run.add_argument("--output", metavar="DIR")
    run.add_argument("--timeout", type=float, metavar="S")
    run.add_argument("--request", metavar="-", help="read the whole request as JSON from stdin")
    run.set_defaults(handler=cmd_run)

    tools = commands.add_parser("tools", help="the whitelisted tools")
    tools.add_argument("--json", action="store_true")
    tools.set_defaults(handler=cmd_tools)

    reap = commands.add_parser("reap", help="remove containers left by coordinators that are gone")
    reap.set_defaults(handler=cmd_reap)

    # `sandbox run` is the hot path: importing every command group (reports, scanners, the
    # server) would cost it tens of milliseconds per call for parsers it never uses.
    for register in _extensions() if extensions else []:
        register(commands)
    return parser


def _extensions() -> list[Callable[[Any], None]]:
    """The other command groups, each in its own module of this package."""
    import importlib
    import pkgutil

    registrars = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        registrars.append(module.register)
    return registrars


def _usage_exit(argv: Sequence[str], exc: SandboxError) -> int:
    if _asked_log_format(argv) == "json":
        # The parse failed, so logging was never configured: a caller that asked for JSON
        # logs on stderr still gets one.
        configure_logging("json")
        logger.error("{}", exc)
    else:
        print(exc, file=sys.stderr)  # already "sandbox: …" (the parser's program name)
    if "run" in argv:
        from ..coordinator import refused_frames

        write_batches([refused_frames(exc)], sys.stdout.buffer)
    return exc.exit_code


def _asked_log_format(argv: Sequence[str]) -> str | None:
    """``--log-format F`` as given, read without the parser that failed."""
    for index, arg in enumerate(argv):
        if arg == "--log-format" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--log-format="):
            return arg.partition("=")[2]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if sys.stdout is None:  # fd 1 closed (`>&-`): the interpreter gives no stream at all
        print(
            "sandbox: stdout is closed; frames and reports are written there, so give it a "
            "pipe or a file (e.g. >/dev/null to discard them)",
            file=sys.stderr,
        )
        return 2
    parser = build_parser(extensions=_command_of(argv) not in _BUILTIN_COMMANDS)
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        return _usage_exit(argv, exc)
    configure_logging(args.log_format, args.log_level)
    handler: Handler = args.handler
    if handler is not cmd_run:
        early_signals.release()  # held only in case this was `run`
        collect_garbage_again()
    try:
        return handler(args)
    except SandboxError as exc:
        logger.error("{}", exc)
        return exc.exit_code
    except BrokenPipeError:
        return 1


def entrypoint() -> None:
    argv = sys.argv[1:]
    code = main(argv)
    if _command_of(argv) == "run":
        _exit_now(code)
    sys.exit(code)


def _exit_now(code: int) -> NoReturn:
    """End a finished ``sandbox run`` without the interpreter's teardown.

    By now its frames are written, its container removed and its audit record fsync'd; what is
    left is tearing down every imported module, which costs a one-shot call ~70 ms for nothing
    (docs/performance.md). Only the standard streams may still hold bytes."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None: that fd was closed when the process began
                stream.flush()
        except (OSError, ValueError):
            code = code or 1
    os._exit(code)
