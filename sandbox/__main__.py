"""``python -m sandbox`` and the ``sandbox`` command."""

from __future__ import annotations

import gc
import os
import sys
import types
from typing import Any

METADATA = "importlib.metadata"


def main() -> None:
    # Start-up allocates a few hundred thousand long-lived objects (pydantic, PyYAML, the
    # models) and no garbage cycles worth finding: the collector would only scan them again
    # and again (≈10 ms of a one-shot run). The CLI switches it back on once its command's
    # imports are done (``cli.collect_garbage_again``).
    gc.disable()
    if "run" in sys.argv[1:]:
        # Before the imports: a signal now must still end the run with its exit frame.
        # Commands other than `run` get the signals back (``cli.main``).
        from . import early_signals

        early_signals.hold()
    without_pydantic_plugins()
    from .cli import entrypoint

    entrypoint()


def without_pydantic_plugins() -> None:
    """Run without pydantic plugins, and without importing the plugin scan's machinery.

    pydantic finds plugins through ``importlib.metadata.entry_points``, and its plugin loader
    imports that module (with email, zipfile, csv: ≈10 ms, before a one-shot run can create its
    container) when the first model is built. The coordinator validates policies and requests
    with no plugin: code installed beside it has no business hooking that validation, so
    ``PYDANTIC_DISABLE_PLUGINS`` is set (unless the caller chose a value) and the scan never
    runs. While the loader is imported it finds a stand-in for ``importlib.metadata`` whose
    ``entry_points`` imports the real module when called (any other name, at once); after
    that, whoever imports ``importlib.metadata`` gets the real module. If the scan does run
    (the caller disabled only some plugins), nothing is lost: it imports the real module then.
    """
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    if METADATA in sys.modules or "pydantic.plugin._loader" in sys.modules:
        return
    sys.modules[METADATA] = _DeferredMetadata(METADATA)
    try:
        import pydantic.plugin._loader  # noqa: F401 - imported now, while the stand-in is there
    finally:
        del sys.modules[METADATA]


class _DeferredMetadata(types.ModuleType):
    """``importlib.metadata`` as seen by a module imported while it stands in: ``entry_points``
    imports the real module when it is called; any other name imports it at once."""

    def __getattr__(self, name: str) -> Any:
        if name == "entry_points":
            return _entry_points
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(_real_metadata(), name)


def _entry_points(**selection: Any) -> Any:
    return _real_metadata().entry_points(**selection)


def _real_metadata() -> types.ModuleType:
    import importlib

    return importlib.import_module(METADATA)


if __name__ == "__main__":
    main()
