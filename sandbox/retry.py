"""The one retry policy: idempotent engine calls only (create with a fixed name, inspect, remove,
list), on transient errors only, bounded and jittered, each retry logged. Never start or attach.

The first attempt runs without tenacity: nearly every call succeeds at once, and importing
tenacity would cost every ``sandbox run`` process its import time. It is loaded for retries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from .log import logger

if TYPE_CHECKING:
    from tenacity import RetryCallState

T = TypeVar("T")
ATTEMPTS = 4


def _log_retry(action: str) -> Callable[[RetryCallState], None]:
    def log(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        logger.warning(
            "engine call '{}' failed (attempt {}/{}): {}; retrying",
            action,
            state.attempt_number,
            ATTEMPTS,
            exc,
        )

    return log


def transient_retry(
    action: str, is_transient: Callable[[BaseException], bool]
) -> Callable[[Callable[[], T]], Callable[[], T]]:
    """Wrap a no-argument idempotent call so transient failures are retried."""

    def wrap(call: Callable[[], T]) -> Callable[[], T]:
        def attempt() -> T:
            try:
                return call()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                first = exc
            return _retry_after(first, action, is_transient, call)

        return attempt

    return wrap


def _retry_after(
    first: BaseException,
    action: str,
    is_transient: Callable[[BaseException], bool],
    call: Callable[[], T],
) -> T:
    """Attempts 2..ATTEMPTS of a call whose first attempt failed transiently with ``first``:
    tenacity sees that failure replayed as its attempt 1, so back-off and logs are its own."""
    from tenacity import Retrying, retry_if_exception, stop_after_attempt
    from tenacity import wait_random_exponential as _wait

    replayed = False

    def again() -> T:
        nonlocal replayed
        if not replayed:
            replayed = True
            raise first
        return call()

    retrying = Retrying(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(ATTEMPTS),
        wait=_wait(multiplier=0.1, max=2.0),
        before_sleep=_log_retry(action),
        reraise=True,
    )
    return retrying(again)
