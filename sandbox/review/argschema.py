"""Is an ``args_schema`` closed? Finds the schema nodes that accept unbounded or unknown input.

Closed means: every object has ``additionalProperties: false``, every string is bounded
(``maxLength``, ``enum``/``const``, or an anchored pattern without unbounded repetition), every
array has ``maxItems`` and an item schema, every node says its ``type``. Combinators are checked
branch by branch (conservative for ``allOf``), and ``$ref`` only within the schema. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .locate import KeyPath

_COMBINATORS = ("anyOf", "oneOf", "allOf")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_UNBOUNDED_REPEAT = re.compile(r"[*+]|\{\d*,\}")


@dataclass(frozen=True)
class OpenNode:
    """One way a schema node lets unbounded or unknown input through."""

    path: tuple[str | int, ...]
    problem: str


def open_nodes(schema: Any, root: KeyPath = ("args_schema",)) -> list[OpenNode]:
    """Every open node of ``schema``, in document order, with its key path from ``root``."""
    found: list[OpenNode] = []
    _visit(schema, tuple(root), found)
    return found


def _visit(node: Any, path: tuple[str | int, ...], found: list[OpenNode]) -> None:
    if node is True:
        found.append(OpenNode(path, "is `true`: any value passes"))
        return
    if not isinstance(node, dict):
        return
    found.extend(OpenNode(path, problem) for problem in _problems(node))
    for child_path, child in _children(node, path):
        _visit(child, child_path, found)


def _children(node: dict[str, Any], path: tuple[str | int, ...]) -> Iterator[tuple[Any, Any]]:
    for key in _SCHEMA_MAPS:
        members = node.get(key)
        if isinstance(members, dict):
            for name, child in members.items():
                yield (*path, key, name), child
    for key in (*_COMBINATORS, "prefixItems"):
        branches = node.get(key)
        if isinstance(branches, list):
            for index, child in enumerate(branches):
                yield (*path, key, index), child
    if "items" in node:
        yield (*path, "items"), node["items"]


def _types(node: dict[str, Any]) -> set[str] | None:
    declared = node.get("type")
    if isinstance(declared, str):
        return {declared}
    if isinstance(declared, list):
        return {str(t) for t in declared}
    return None


def _problems(node: dict[str, Any]) -> list[str]:
    ref = node.get("$ref")
    if isinstance(ref, str) and not ref.startswith("#"):
        return ["`$ref` points outside the schema, so this file does not show what passes"]
    # Listed values bound themselves; a local $ref is checked where it is defined.
    if "enum" in node or "const" in node or "$ref" in node:
        return []
    types = _types(node)
    if types is None:
        if any(key in node for key in _COMBINATORS):
            return []
        return ["has no `type`, so any JSON value passes"]
    problems: list[str] = []
    if "object" in types:
        problems += _object_problems(node)
    if "string" in types and not _string_bounded(node):
        problems.append(
            "string without `maxLength` (or enum, const, or an anchored pattern without "
            "unbounded repetition)"
        )
    if "array" in types:
        problems += _array_problems(node)
    return problems


def _object_problems(node: dict[str, Any]) -> list[str]:
    problems = []
    if (
        node.get("additionalProperties") is not False
        and node.get("unevaluatedProperties") is not False
    ):
        problems.append("object without `additionalProperties: false` accepts unknown keys")
    if node.get("patternProperties") and "maxProperties" not in node:
        problems.append("`patternProperties` without `maxProperties` accepts unboundedly many keys")
    return problems


def _array_problems(node: dict[str, Any]) -> list[str]:
    problems = []
    if "maxItems" not in node:
        problems.append("array without `maxItems`")
    if "items" not in node:
        problems.append("array without an `items` schema accepts any items")
    return problems


def _string_bounded(node: dict[str, Any]) -> bool:
    if isinstance(node.get("maxLength"), int):
        return True
    pattern = node.get("pattern")
    return isinstance(pattern, str) and bounded_pattern(pattern)


def bounded_pattern(pattern: str) -> bool:
    """Whether a regex admits only strings of bounded length: anchored at both ends, no
    top-level alternation, no ``*``/``+``/``{n,}`` outside character classes. Conservative."""
    if not pattern.startswith("^") or not pattern.endswith("$") or pattern.endswith("\\$"):
        return False
    body = re.sub(r"\\.", "", pattern)
    body = re.sub(r"\[[^\]]*\]", "", body)
    if _UNBOUNDED_REPEAT.search(body):
        return False
    depth = 0
    for char in body:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "|" and depth == 0:
            return False
    return True
