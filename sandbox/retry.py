"""The one retry policy: idempotent engine calls only (create with a fixed name, inspect, remove,
list), on transient errors only, bounded and jittered, each retry logged. Never start or attach.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from loguru import logger
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from tenacity import wait_random_exponential as _wait

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
            retrying = Retrying(
                retry=retry_if_exception(is_transient),
                stop=stop_after_attempt(ATTEMPTS),
                wait=_wait(multiplier=0.1, max=2.0),
                before_sleep=_log_retry(action),
                reraise=True,
            )
            return retrying(call)

        return attempt

    return wrap
