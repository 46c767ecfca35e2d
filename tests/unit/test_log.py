"""The lazy logger: nothing below the level touches loguru; what passes it reaches the sinks
from the module that logged."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sandbox.cli import main
from sandbox.log import LazyLogger, level_number


@pytest.fixture
def messages() -> Iterator[list[Any]]:
    from loguru import logger as real

    caught: list[Any] = []
    sink = real.add(lambda m: caught.append(m.record), level="TRACE", format="{message}")
    try:
        yield caught
    finally:
        real.remove(sink)


def test_a_library_logs_nothing_until_enabled(messages: list[Any]) -> None:
    log = LazyLogger()
    log.error("not yet")
    log.enable("INFO")
    log.debug("below the level")
    log.info("shown {}", 1)
    log.disable()
    log.error("off again")
    assert [m["message"] for m in messages] == ["shown 1"]


def test_a_message_names_the_module_that_logged_it(messages: list[Any]) -> None:
    log = LazyLogger()
    log.enable()
    log.warning("here")
    assert messages[0]["name"] == __name__
    assert messages[0]["function"] == "test_a_message_names_the_module_that_logged_it"


def test_an_error_carries_its_exception(messages: list[Any]) -> None:
    log = LazyLogger()
    log.enable()
    try:
        int("x")
    except ValueError as exc:
        log.error("failed: {}", "parse", exception=exc)
    assert messages[0]["message"] == "failed: parse"
    assert messages[0]["exception"].type is ValueError


def test_levels_are_named_in_any_case_and_unknown_ones_are_refused() -> None:
    assert level_number("warning") == level_number("WARNING") == 30
    with pytest.raises(ValueError, match="unknown log level 'LOUD'; choose one of TRACE"):
        level_number("LOUD")


def test_an_unknown_log_level_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--log-level", "LOUD", "tools"]) == 2
    assert "unknown log level 'LOUD'" in capsys.readouterr().err
