"""Where a key is written in a YAML file: key paths to 1-based line numbers, for findings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

KeyPath = Sequence[str | int]


class KeyLines:
    """Line lookups in one parsed YAML node tree (from ``policy.load_yaml``)."""

    def __init__(self, root: Any) -> None:
        self._root = root

    def _walk(self, path: KeyPath) -> tuple[int, bool]:
        """The line of the deepest node of ``path`` that exists, and whether all of it does."""
        node = self._root
        if node is None:
            return 1, False
        line = int(node.start_mark.line) + 1
        for part in path:
            child = _child(node, part)
            if child is None:
                return line, False
            line, node = child
        return line, True

    def line(self, path: KeyPath) -> int:
        """The line of ``path``'s key, or of its nearest written ancestor (1 at worst)."""
        return self._walk(path)[0]

    def has(self, path: KeyPath) -> bool:
        """Whether ``path`` is written in the file (not filled in by a default)."""
        return self._walk(path)[1]


def _child(node: Any, part: str | int) -> tuple[int, Any] | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == part:
                return int(key.start_mark.line) + 1, value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        item = node.value[part]
        return int(item.start_mark.line) + 1, item
    return None


def dotted(path: KeyPath) -> str:
    """``("limits", "memory_mb")`` -> ``limits.memory_mb``."""
    return ".".join(str(part) for part in path)
