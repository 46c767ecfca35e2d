"""The one-shot ``sandbox run`` path stays lean. No timing is asserted (benchmarks do that,
`make bench`): which modules a fresh process loads, and how it writes, are facts."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..conftest import ROOT

if TYPE_CHECKING:
    from sandbox.frames import Frame

# Each of these costs a one-shot `sandbox run` tens of milliseconds to import, and the run path
# has no use for them unless something goes wrong (docs/performance.md).
NOT_ON_THE_RUN_PATH = (
    "docker",
    "requests",
    "urllib3",
    "loguru",
    "tenacity",
    "asyncio",
    "http",
    "psutil",
    # pydantic's plugin scan would import it (with email, zipfile, csv); the CLI runs without
    # plugins (sandbox/__main__.py).
    "importlib.metadata",
)


def _fresh_python(code: str, **env: str) -> list[str]:
    """What ``code`` prints, one line per item, in a fresh interpreter set up as ``python -m
    sandbox`` sets itself up before the CLI's imports."""
    prelude = "from sandbox.__main__ import without_pydantic_plugins; without_pydantic_plugins();"
    environ = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    out = subprocess.run(
        [sys.executable, "-c", prelude + code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**environ, **env},
    )
    return out.stdout.splitlines()


def test_the_run_path_imports_none_of_what_it_has_no_use_for() -> None:
    printed = _fresh_python(
        "import sys, os, sandbox.cli, sandbox.coordinator, sandbox.docker_runtime;"
        "from sandbox.cli import build_parser; build_parser(extensions=False);"
        f"print(sorted(m for m in {NOT_ON_THE_RUN_PATH!r} if m in sys.modules));"
        "print(os.environ['PYDANTIC_DISABLE_PLUGINS'])"
    )
    assert printed == ["[]", "__all__"]


def test_importlib_metadata_is_the_real_module_for_everyone_after_start_up() -> None:
    printed = _fresh_python(
        "import sys, importlib.metadata as m, pydantic.plugin._loader as loader;"
        "print(m.__file__ is not None and hasattr(m, 'distribution'));"
        "print(sys.modules['importlib.metadata'] is m);"
        # The loader's entry_points, called, answers what the real one answers.
        "names = lambda eps: sorted(e.name for e in eps);"
        "print(names(loader.entry_points(group='console_scripts')) =="
        " names(m.entry_points(group='console_scripts')) != [])"
    )
    assert printed == ["True", "True", "True"]


def test_a_caller_that_disables_only_some_plugins_still_gets_the_plugin_scan() -> None:
    printed = _fresh_python(
        "import sys, os, sandbox.policy, pydantic.plugin._loader as loader;"
        "print(os.environ['PYDANTIC_DISABLE_PLUGINS']);"
        "print(list(loader.get_plugins()), 'importlib.metadata' in sys.modules)",
        PYDANTIC_DISABLE_PLUGINS="someone-elses-plugin",
    )
    assert printed == ["someone-elses-plugin", "[] True"]


def test_sandbox_run_widens_a_stdout_pipe_and_leaves_other_outputs_alone(
    tmp_path: Path,
) -> None:
    import fcntl
    import os

    from sandbox.cli import widen_pipe
    from sandbox.stdout_pipe import PIPE_BYTES

    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "wb") as out, os.fdopen(read_end, "rb"):
        widen_pipe(out)
        assert fcntl.fcntl(out.fileno(), fcntl.F_GETPIPE_SZ) == PIPE_BYTES
    with (tmp_path / "frames.jsonl").open("wb") as regular:
        widen_pipe(regular)  # a file: nothing to widen, and no error


class CountingOut:
    """A binary stdout that records each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.writes.append(data)
        return len(data)

    def flush(self) -> None:
        pass


def test_sandbox_run_writes_a_batch_of_frames_with_one_write() -> None:
    from sandbox.cli import write_batches
    from sandbox.frames import FrameFactory, encode

    factory = FrameFactory("r")
    batches = [[factory.log("stdout", f"line {i}") for i in range(3)], [factory.make("exit")]]
    out = CountingOut()
    last = write_batches(batches, out)  # type: ignore[arg-type]
    assert last["type"] == "exit"
    assert out.writes == [b"".join(encode(f) for f in batches[0]), encode(batches[1][0])]


def test_the_collector_starts_off_and_comes_back_on_with_start_up_frozen() -> None:
    code = (
        "import gc, sys;"
        "sys.argv = ['sandbox', 'run', 'no-such-tool'];"
        "import sandbox.__main__ as m, sandbox.cli as cli;"
        "seen = [];"
        "cli._reap_quietly = lambda coordinator: None;"
        "cli.write_batches = lambda batches, out: seen.append(gc.isenabled()) or {};"
        "cli._exit_now = lambda code: (print(seen, gc.get_freeze_count() > 0), sys.exit(0));"
        "gc.enable(); m.main()"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.strip()
    assert out == "[True] True"  # on again when the frames flow, start-up's objects frozen


class RecordingCoordinator:
    """Stands in for the coordinator's ``reap``: records when it ran, relative to the batches."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def reap(self) -> list[str]:
        self.events.append("reaped")
        return []


def _frames_of(events: list[str], types: list[str]) -> Iterator[list[Frame]]:
    from sandbox.frames import FrameFactory

    factory = FrameFactory("r")
    for type_ in types:
        events.append(f"made {type_}")
        yield [factory.make(type_)]


def test_sandbox_run_reaps_only_once_its_container_has_started_and_before_it_ends() -> None:
    """Until the container runs, the run is on its critical path (imports, validation, create,
    start); a reaper thread then would contend with it for the interpreter lock."""
    from sandbox.cli import _reaping_once_started

    events: list[str] = []
    batches = _frames_of(events, ["accepted", "started", "log", "exit"])
    seen = []
    for batch in _reaping_once_started(batches, RecordingCoordinator(events)):
        seen.append(batch[0]["type"])
        events.append(f"wrote {batch[0]['type']}")
    assert seen == ["accepted", "started", "log", "exit"]
    assert events.index("reaped") > events.index("wrote started")
    assert events.count("reaped") == 1  # and, joined, done by the time the batches end


def test_sandbox_run_does_not_reap_for_a_run_that_started_no_container() -> None:
    from sandbox.cli import _reaping_once_started

    events: list[str] = []
    batches = _frames_of(events, ["error", "exit"])
    assert [b[0]["type"] for b in _reaping_once_started(batches, RecordingCoordinator(events))] == [
        "error",
        "exit",
    ]
    assert "reaped" not in events
