"""Signals that arrive while ``sandbox run`` starts, before it can act on them.

The interpreter and the imports take ~0.1 s, and a caller may give up at once (a Node.js
``AbortSignal``). Without a handler, SIGINT would end the process with a traceback and SIGTERM
or SIGHUP silently, either way without the exit frame every run owes its caller. Standard
library only: this is installed before anything else is imported. A signal the caller set to
be ignored (``nohup``, a background job) stays ignored."""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

RUN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_received: list[int] = []
_previous: dict[int, Any] = {}


def _remember(signum: int, _frame: FrameType | None) -> None:
    _received.append(signum)


def hold() -> None:
    """Keep the run signals for later instead of dying of them."""
    for signum in RUN_SIGNALS:
        previous = signal.getsignal(signum)
        if previous is not signal.SIG_IGN:
            _previous[signum] = previous
            signal.signal(signum, _remember)


def handle(handler: Callable[[int, FrameType | None], None]) -> None:
    """Install the run's own handler for every run signal that is not ignored."""
    for signum in RUN_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, handler)


def received() -> list[int]:
    """The signals held so far."""
    return list(_received)


def release() -> None:
    """The dispositions from before ``hold``, and what was held delivered (for commands other
    than ``run``, which install their own handlers or none)."""
    for signum, previous in _previous.items():
        signal.signal(signum, previous)
    _previous.clear()
    held, _received[:] = list(_received), []
    for signum in held:
        signal.raise_signal(signum)
