"""The package's logger: loguru's, imported only when a message is actually emitted.

``sandbox run`` is one process per call, and importing loguru (which brings asyncio) costs it
tens of milliseconds on every call, while nearly every run logs nothing at the chosen level.
So modules log through this facade: a message below the threshold is dropped without touching
loguru; one at or above it imports loguru, applies the CLI's sink set-up once, and is logged
from the caller's frame (so loguru's own per-module filters still see ``sandbox.…`` names).

A library never logs on its own: the threshold starts above every level. The CLI calls
``configure``; a program embedding sandbox calls ``enable`` and configures loguru itself.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

LEVELS = {
    "TRACE": 5,
    "DEBUG": 10,
    "INFO": 20,
    "SUCCESS": 25,
    "WARNING": 30,
    "ERROR": 40,
    "CRITICAL": 50,
}
_OFF = 1000
TEXT_FORMAT = "{time:HH:mm:ss} {level: <7} {message}"


def level_number(name: str) -> int:
    """The numeric level of ``name`` (any case); ValueError naming the choices otherwise."""
    try:
        return LEVELS[name.upper()]
    except KeyError:
        msg = f"unknown log level {name!r}; choose one of {', '.join(LEVELS)}"
        raise ValueError(msg) from None


class LazyLogger:
    """The subset of loguru's logger that sandbox uses, with loguru loaded on demand."""

    def __init__(self) -> None:
        self._threshold = _OFF
        self._setup: Callable[[Any], None] | None = None
        self._real: Any = None
        self._lock = threading.Lock()

    # --- configuration --------------------------------------------------------------------

    def configure(self, fmt: str, level: str) -> None:
        """The CLI's set-up: messages at ``level`` and above go to stderr as text or JSON."""
        name = level.upper()
        threshold = level_number(name)

        def setup(real: Any) -> None:
            real.remove()
            if fmt == "json":
                real.add(sys.stderr, level=name, serialize=True)
            else:
                real.add(sys.stderr, level=name, format=TEXT_FORMAT)

        with self._lock:
            self._threshold = threshold
            self._setup = setup
            if self._real is not None:
                setup(self._real)
                self._setup = None

    def enable(self, level: str = "TRACE") -> None:
        """Forward messages at ``level`` and above to loguru, configured by the caller."""
        with self._lock:
            self._threshold = level_number(level)
            self._setup = None

    def disable(self) -> None:
        with self._lock:
            self._threshold = _OFF

    # --- messages -------------------------------------------------------------------------

    def debug(self, message: str, *args: Any) -> None:
        self._emit("DEBUG", message, args)

    def info(self, message: str, *args: Any) -> None:
        self._emit("INFO", message, args)

    def warning(self, message: str, *args: Any) -> None:
        self._emit("WARNING", message, args)

    def error(self, message: str, *args: Any, exception: BaseException | None = None) -> None:
        """``exception`` adds its traceback to the message (loguru's ``opt(exception=…)``)."""
        self._emit("ERROR", message, args, exception)

    def _emit(
        self,
        level: str,
        message: str,
        args: tuple[Any, ...],
        exception: BaseException | None = None,
    ) -> None:
        if LEVELS[level] < self._threshold:
            return
        # depth 2: past _emit and the level method, to the module that logged.
        self._loguru().opt(depth=2, exception=exception).log(level, message, *args)

    def _loguru(self) -> Any:
        with self._lock:
            if self._real is None:
                from loguru import logger

                self._real = logger
            if self._setup is not None:
                self._setup(self._real)
                self._setup = None
            return self._real


logger = LazyLogger()
