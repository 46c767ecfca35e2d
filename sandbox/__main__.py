"""``python -m sandbox``."""

from __future__ import annotations

from .cli import entrypoint

entrypoint()
