"""Which way did an ``args_schema`` change move? Keyword-by-keyword comparison of two JSON
Schemas. Pure.

Bounds (``maxLength``, ``maximum``...) that grow, properties that appear, ``required``
entries that go, ``enum`` values that appear and closed nodes that open are loosening; the
reverse is tightening (a property that goes tightens only a closed object: in an open one its
key is then accepted as anything), and each way is reversed under ``not``; anything whose
effect is not obvious (``$ref``, combinators, ``if``, a changed pattern) is neutral.
Annotations (title, description, examples) are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

Direction = Literal["loosening", "tightening", "neutral"]
SchemaChange = tuple[str, Direction, Any, Any]

_ABSENT: Any = object()
_INF = float("inf")
_ANNOTATIONS = frozenset(
    {"title", "description", "examples", "$comment", "default", "deprecated", "readOnly"}
)
_UPPER = frozenset(
    {"maxLength", "maxItems", "maxProperties", "maximum", "exclusiveMaximum", "maxContains"}
)
_LOWER = frozenset(
    {"minLength", "minItems", "minProperties", "minimum", "exclusiveMinimum", "minContains"}
)
# Keywords whose absence (or `true`) accepts anything, whose `false` accepts nothing.
_OPENNESS = frozenset(
    {"items", "additionalProperties", "unevaluatedProperties", "unevaluatedItems"}
)
_SUBSCHEMAS = _OPENNESS | {"contains", "propertyNames", "not", "if", "then", "else"}
# Maps of name -> schema; a new member of the first two accepts a new key.
_ACCEPTING_MAPS = frozenset({"properties", "patternProperties"})
_MAPS = _ACCEPTING_MAPS | {"$defs", "definitions", "dependentSchemas"}
# How a change inside a subschema reads from outside it: under `not` it works the other way
# (a value gone from a denylist is allowed), under `if` it only picks the branch that applies.
_UNDER: dict[str, dict[Direction, Direction]] = {
    "not": {"loosening": "tightening", "tightening": "loosening"},
    "if": {"loosening": "neutral", "tightening": "neutral"},
}
_UNDER.update({key: {} for key in _SUBSCHEMAS - _UNDER.keys()})


def schema_changes(old: Any, new: Any, path: str) -> Iterator[SchemaChange]:
    """Each change from ``old`` to ``new`` below ``path``, with its direction."""
    if old == new:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        yield from _keywords(old, new, path)
    else:
        yield path, "neutral", old, new


def _keywords(old: dict[str, Any], new: dict[str, Any], path: str) -> Iterator[SchemaChange]:
    for key in [*new, *(k for k in old if k not in new)]:
        before, after = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if key in _ANNOTATIONS or before == after:
            continue
        where = f"{path}.{key}"
        if key in _MAPS and _is_map(before) and _is_map(after):
            yield from _members(key, _as_map(before), _as_map(after), where, new)
        elif key in _SUBSCHEMAS and isinstance(before, dict) and isinstance(after, dict):
            yield from (
                (at, _UNDER[key].get(direction, direction), was, now)
                for at, direction, was, now in schema_changes(before, after, where)
            )
        else:
            yield where, _direction(key, before, after), _shown(before), _shown(after)


def _is_map(value: Any) -> bool:
    return value is _ABSENT or isinstance(value, dict)


def _as_map(value: Any) -> dict[str, Any]:
    return {} if value is _ABSENT else dict(value)


def _shown(value: Any) -> Any:
    return None if value is _ABSENT else value


def _members(
    key: str, old: dict[str, Any], new: dict[str, Any], path: str, parent: dict[str, Any]
) -> Iterator[SchemaChange]:
    accepting = key in _ACCEPTING_MAPS
    for name in [*new, *(n for n in old if n not in new)]:
        where = f"{path}.{name}"
        if name not in old:
            yield where, "loosening" if accepting else "neutral", None, new[name]
        elif name not in new:
            gone = _dropped(key, old[name], parent) if accepting else "neutral"
            yield where, gone, old[name], None
        else:
            yield from schema_changes(old[name], new[name], where)


# Keywords that may evaluate an object's keys besides properties and patternProperties.
_EVALUATORS = frozenset(
    {"allOf", "anyOf", "oneOf", "$ref", "$dynamicRef", "if", "dependentSchemas"}
)


def _dropped(key: str, schema: Any, parent: dict[str, Any]) -> Direction:
    """A property (or pattern) gone from an object (``parent``, as it is now): its keys fall to
    what else the object says. Refused when it is closed (tightening), anything when it is
    open (loosening, unless the schema gone accepted anything too); neutral when another schema
    takes them (a pattern, a schema for the rest, a combinator)."""
    others = set(parent) & _EVALUATORS
    if others or (key == "properties" and parent.get("patternProperties")):
        return "neutral"
    rest = parent.get("additionalProperties", parent.get("unevaluatedProperties", True))
    if rest is False:
        return "tightening"
    if rest is True:
        return "neutral" if schema is True or schema == {} else "loosening"
    return "neutral"


def _direction(key: str, before: Any, after: Any) -> Direction:
    if key in _UPPER:
        return _looser_if(_num(after, _INF) > _num(before, _INF))
    if key in _LOWER:
        return _looser_if(_num(after, -_INF) < _num(before, -_INF))
    if key in _OPENNESS:
        return _looser_if(_openness(after) > _openness(before))
    if key == "required":
        return _subset(_set(before), _set(after))
    if key in ("enum", "type"):
        return _accepts(before, after)
    if key in ("const", "pattern", "format", "$ref"):
        return _presence(before, after)
    return "neutral"


def _looser_if(looser: bool) -> Direction:
    return "loosening" if looser else "tightening"


def _num(value: Any, absent: float) -> float:
    return float(value) if isinstance(value, int | float) and value is not _ABSENT else absent


def _openness(value: Any) -> int:
    if value is _ABSENT or value is True:
        return 2
    return 0 if value is False else 1


def _set(value: Any) -> set[str]:
    """A keyword's values as comparable JSON texts (a missing keyword is the empty set)."""
    if value is _ABSENT:
        return set()
    values = value if isinstance(value, list) else [value]
    return {json.dumps(v, sort_keys=True) for v in values}


def _subset(before: set[str], after: set[str]) -> Direction:
    """``required``: entries added tighten; any entry dropped loosens."""
    if before == after:
        return "neutral"
    return "tightening" if after >= before else "loosening"


def _accepts(before: Any, after: Any) -> Direction:
    """``enum``/``type``: absent accepts everything; any newly listed value loosens."""
    if after is _ABSENT:
        return "loosening"
    if before is _ABSENT:
        return "tightening"
    old, new = _set(before), _set(after)
    if old == new:
        return "neutral"
    return "tightening" if new <= old else "loosening"


def _presence(before: Any, after: Any) -> Direction:
    """A constraint that appears tightens, one that goes loosens, a changed one is neutral."""
    if before is _ABSENT:
        return "tightening"
    if after is _ABSENT:
        return "loosening"
    return "neutral"
