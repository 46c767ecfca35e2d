"""``python -m sandbox`` and the ``sandbox`` command."""

from __future__ import annotations

import gc


def main() -> None:
    # Start-up allocates a few hundred thousand long-lived objects (pydantic, PyYAML, the
    # models) and no garbage cycles worth finding: the collector would only scan them again
    # and again (≈10 ms of a one-shot run). The CLI switches it back on once its command's
    # imports are done (``cli.collect_garbage_again``).
    gc.disable()
    from .cli import entrypoint

    entrypoint()


if __name__ == "__main__":
    main()
