"""The relaxations of a policy (what it allows beyond the strict defaults) and the
justification each one needs. Shared by ``policy check`` (unjustified ones are findings) and
``policy audit`` (all of them, with their reasons). Pure.

A relaxation of field ``a.b.c`` is justified by ``justification["a.b.c"]``, else by the entry
of the nearest enclosing key (``a.b``, then ``a``): one reason may cover a whole section.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..policy import Policy
from .argschema import open_nodes
from .baseline import BOUNDED_FIELDS, Baseline, BoundedField
from .locate import dotted

MIN_JUSTIFICATION_CHARS = 20


@dataclass(frozen=True)
class Relaxation:
    """One thing a policy allows beyond the strict default, and why (if it says)."""

    field: str
    """Dotted field name, also the justification key (``limits.memory_mb``)."""
    path: tuple[str | int, ...]
    """Key path in the policy file, for the line of a finding."""
    value: str
    strict: str
    """The strict value it relaxes (the threshold, ``none``, ``closed``)."""
    rule: str
    """The check rule that fails when it is unjustified."""
    justification: str | None


def bounded_value(policy: Policy, field: BoundedField) -> float:
    """The policy's value of a bounded field (``limits.memory_mb`` -> 512)."""
    section, name = field.split(".")
    value: float = getattr(getattr(policy, section), name)
    return value


def number(value: float) -> str:
    """A number as people write it: 512, 1.5."""
    return f"{value:g}"


def justification_for(field: str, justification: dict[str, str]) -> str | None:
    """The entry justifying ``field``: its own, else the nearest enclosing key's."""
    parts = field.split(".")
    for end in range(len(parts), 0, -1):
        reason = justification.get(".".join(parts[:end]))
        if reason is not None:
            return reason
    return None


def relaxations(policy: Policy, baseline: Baseline) -> list[Relaxation]:
    """Every relaxation of the policy: open schema nodes, bounded fields, network."""
    found: list[Relaxation] = []

    def add(field: str, path: tuple[str | int, ...], value: str, strict: str, rule: str) -> None:
        reason = justification_for(field, policy.justification)
        found.append(Relaxation(field, path, value, strict, rule, reason))

    for node in open_nodes(policy.args_schema):
        add(dotted(node.path), node.path, node.problem, "closed", "SBX007")
    for field in BOUNDED_FIELDS:
        value, threshold = bounded_value(policy, field), baseline.threshold(field)
        if value > threshold:
            add(field, tuple(field.split(".")), number(value), number(threshold), "SBX011")
    if policy.network != "none":
        add("network", ("network",), policy.network, "none", "SBX003")
    return found


def stale_justifications(policy: Policy, found: list[Relaxation]) -> list[str]:
    """Justification keys that justify no relaxation (often a misspelled field)."""
    fields = [r.field for r in found]
    return [
        key
        for key in policy.justification
        if not any(field == key or field.startswith(f"{key}.") for field in fields)
    ]


def thin_justifications(policy: Policy) -> list[str]:
    """Justification keys whose text is too short to be a reason ("ok", "TODO")."""
    return [
        key
        for key, text in policy.justification.items()
        if len(text.strip()) < MIN_JUSTIFICATION_CHARS
    ]
