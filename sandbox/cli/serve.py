"""``sandbox serve``: wires the JSON-RPC server (``sandbox.serve``) to this process: the stdio
file descriptors, SIGTERM/SIGINT, the engine and the defaults.

Imports of the server and the engine are deferred to the handler: every CLI command loads this
module to register it, and should not pay for them.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, BinaryIO

from ..log import logger
from . import _reap_quietly, count_at_least, widen_pipe


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 3600:
        msg = f"expected seconds in (0, 3600), got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def register(commands: Any) -> None:
    serve = commands.add_parser(
        "serve", help="long-lived JSON-RPC 2.0 server on stdin/stdout, many concurrent runs"
    )
    serve.add_argument(
        "--max-concurrent",
        type=count_at_least(1),
        metavar="N",
        help="runs at once (default: cores, at most one per 512 MiB of available memory)",
    )
    serve.add_argument(
        "--queue", type=count_at_least(0), metavar="N", help="runs waiting for a slot (default 64)"
    )
    serve.add_argument(
        "--shutdown-grace",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="how long a stop waits for cancelled runs to end (default 30)",
    )
    serve.add_argument(
        "--pool-max",
        type=count_at_least(0),
        default=8,
        metavar="N",
        help="idle pre-created containers at most on the engine, all policies and every server "
        "on the host together (default 8; the policies' pool.warm asks for them)",
    )
    serve.set_defaults(handler=cmd_serve)


def _claim_stdio() -> tuple[BinaryIO, BinaryIO]:
    """Unbuffered handles on the JSON-RPC channel; fd 1 then points at stderr, so that a stray
    print (ours or a library's) lands in the log instead of corrupting the channel."""
    channel_in = os.fdopen(0, "rb", buffering=0, closefd=False)
    channel_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    widen_pipe(channel_out)
    return channel_in, channel_out


def _install_stop(stop: Callable[..., None]) -> None:
    # No logging here: a handler may interrupt a log call holding the sink's lock.
    def handle(signum: int, _frame: FrameType | None) -> None:
        stop(cancel=True, reason=f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    # A closed terminal: stop like SIGTERM (as `sandbox run` does), unless the caller ignores
    # it (`nohup`); its default action would leave the running containers behind.
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, handle)


def cmd_serve(args: argparse.Namespace) -> int:
    from .. import hostcheck
    from ..coordinator import Coordinator
    from ..docker_runtime import DockerRuntime
    from ..pool import BackgroundRemover, StartGate, WarmPool
    from ..serve import DEFAULT_QUEUE, ServeOptions, Server, default_max_concurrent
    from . import audit_log, policy_dir

    runtime = DockerRuntime()
    # The same audit log as `sandbox run`: a run through the server is audited like any other.
    coordinator = Coordinator(runtime=runtime, policy_dir=policy_dir(args), audit=audit_log(args))
    # Removal of exited containers and the warm pool's refills run off the runs' critical path
    # (docs/performance.md); both are emptied before the process exits.
    gate = StartGate()
    remover = BackgroundRemover(runtime, gate=gate)
    assert coordinator.owner is not None  # noqa: S101 - set by Coordinator.__post_init__
    pool = WarmPool(
        runtime, owner=coordinator.owner, remover=remover, gate=gate, max_total=args.pool_max
    )
    coordinator.remover, coordinator.pool, coordinator.start_gate = remover, pool, gate
    # Beside the server, not before it: an engine that is slow to answer (or never does) must
    # not keep `health`, `tools` or a stop from being answered, and every engine call of this
    # start-up may wait minutes. The reap removes the containers of servers that crashed (their
    # owner is gone); it spares live owners, so runs may start meanwhile.
    threading.Thread(
        target=_start_up, args=(coordinator, pool), name="serve-start-up", daemon=True
    ).start()
    options = ServeOptions(
        max_concurrent=args.max_concurrent or default_max_concurrent(hostcheck.snapshot()),
        queue_max=DEFAULT_QUEUE if args.queue is None else args.queue,
        shutdown_grace_s=args.shutdown_grace,
    )
    channel_in, channel_out = _claim_stdio()
    server = Server(coordinator, channel_in, channel_out, options=options, engine_info=runtime.info)
    _install_stop(server.request_stop)
    logger.info(
        "serving JSON-RPC 2.0 on stdio: {} concurrent runs, queue of {}, policies {}",
        options.max_concurrent,
        options.queue_max,
        coordinator.policy_dir,
    )
    try:
        return server.serve()
    finally:
        pool.close()
        remover.close(timeout_s=args.shutdown_grace + 30)


def _start_up(coordinator: Any, pool: Any) -> None:
    _reap_quietly(coordinator)
    _prewarm(coordinator, pool)


def _prewarm(coordinator: Any, pool: Any) -> None:
    """Start filling the pool for every policy that asks for warm containers."""
    from ..errors import SandboxError
    from ..policy import policy_files

    try:
        paths = policy_files(coordinator.policy_dir)
    except SandboxError as exc:
        logger.warning("warm pool not primed: {}", exc)
        return
    for path in paths:
        try:
            loaded = coordinator.policies.find(coordinator.policy_dir, path.stem)
            if loaded.policy.pool.warm > 0:
                coordinator.runtime.check_image(loaded.policy.image.name, loaded.policy.image.id)
                pool.want(loaded)
        except SandboxError as exc:  # that tool's runs will report it
            logger.warning("warm pool: skipping {}: {}", path.name, exc)
