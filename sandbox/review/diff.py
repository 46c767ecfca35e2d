"""``sandbox policy diff OLD NEW``: each security-relevant change between two policy sets,
marked loosening (the tool may do more), tightening (less) or neutral (different, read it).

What counts, per tool: image, command, user, runtime, network, limits, output, inputs
(count and roots), env, args_schema (keyword by keyword) and justifications; tools added or
removed; and the baseline itself. Descriptions and warm-pool sizes are not security-relevant.
When a direction cannot be told, the change is neutral, never tightening. Pure, but for one
look at the disk: whether a new input root inside an allowed one is a link out of it.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..policy import LoadedPolicy, Policy, real_root
from .baseline import BOUNDED_FIELDS, Baseline
from .catalog import printable
from .relax import bounded_value
from .roots import within
from .schema_diff import Direction, schema_changes

BASELINE_TOOL = "(baseline)"
_DIRECTIONS: tuple[Direction, ...] = ("loosening", "tightening", "neutral")
_RUNTIME_STRICTNESS = {"runsc": 1, "runc": 0}


@dataclass(frozen=True)
class Change:
    tool: str
    field: str
    direction: Direction
    old: Any
    """None when the field (or tool) is new."""
    new: Any
    """None when the field (or tool) is gone."""


def _higher_looser(old: float, new: float) -> Direction:
    return "loosening" if new > old else "tightening"


def _scalar(tool: str, field: str, old: Any, new: Any) -> Iterator[Change]:
    if old != new:
        yield Change(tool, field, "neutral", old, new)


def _network(tool: str, old: str, new: str) -> Iterator[Change]:
    if old == new:
        return
    direction: Direction = "neutral"
    if old == "none":
        direction = "loosening"
    elif new == "none":
        direction = "tightening"
    yield Change(tool, "network", direction, old, new)


def _runtime(tool: str, old: str, new: str) -> Iterator[Change]:
    if old != new:
        looser = _RUNTIME_STRICTNESS[new] < _RUNTIME_STRICTNESS[old]
        yield Change(tool, "runtime", "loosening" if looser else "tightening", old, new)


def _numbers(tool: str, old: Policy, new: Policy, prefix: str) -> Iterator[Change]:
    """The bounded fields of one section (``limits.``...): higher is looser."""
    for field in BOUNDED_FIELDS:
        if field.startswith(prefix):
            before, after = bounded_value(old, field), bounded_value(new, field)
            if before != after:
                yield Change(tool, field, _higher_looser(before, after), before, after)
    if prefix == "limits." and old.limits.frame_kb != new.limits.frame_kb:
        before, after = old.limits.frame_kb, new.limits.frame_kb
        yield Change(tool, "limits.frame_kb", _higher_looser(before, after), before, after)


def _covered(root: str, roots: list[str]) -> bool:
    """Whether ``root`` lies at or under one of ``roots`` (paths as written, normalized)."""
    path = posixpath.normpath(root)
    for other in map(posixpath.normpath, roots):
        if path == other or path.startswith(other.rstrip("/") + "/"):
            return True
    return False


def _inside_really(root: str, roots: list[str], base: Path) -> bool:
    """Whether ``root``, resolved from the policy directory ``base`` as runs resolve it, lies at
    or under one of ``roots`` resolved the same way: a link inside an allowed root can point
    anywhere."""
    real = real_root(base, root)
    return any(within(real, real_root(base, other)) for other in roots)


def _roots(tool: str, old: list[str], new: list[str], base: Path | None) -> Iterator[Change]:
    field = "inputs.allowed_roots"
    for root in new:
        if root not in old:
            # A root inside one that was already allowed grants nothing new, unless it is (or
            # passes through) a link out of it: checked where the new policy is a checkout.
            inside = _covered(root, old) and (base is None or _inside_really(root, old, base))
            direction: Direction = "neutral" if inside else "loosening"
            yield Change(tool, field, direction, None, root)
    for root in old:
        if root not in new:
            direction = "neutral" if _covered(root, new) else "tightening"
            yield Change(tool, field, direction, root, None)


def _mapping(tool: str, field: str, old: dict[str, str], new: dict[str, str]) -> Iterator[Change]:
    for key in [*new, *(k for k in old if k not in new)]:
        yield from _scalar(tool, f"{field}.{key}", old.get(key), new.get(key))


def _schema(tool: str, old: dict[str, Any], new: dict[str, Any]) -> Iterator[Change]:
    for path, direction, before, after in schema_changes(old, new, "args_schema"):
        yield Change(tool, path, direction, before, after)


def policy_changes(
    tool: str, old: Policy, new: Policy, new_dir: Path | None = None
) -> list[Change]:
    """The security-relevant changes of one tool's policy, in file order. ``new_dir``: the new
    policy's directory when it is one on disk (not a git revision), to resolve input roots."""
    return [
        *_scalar(tool, "image.name", old.image.name, new.image.name),
        *_scalar(tool, "image.id", old.image.id, new.image.id),
        *_scalar(tool, "command", old.command, new.command),
        *_schema(tool, old.args_schema, new.args_schema),
        *_roots(tool, old.inputs.allowed_roots, new.inputs.allowed_roots, new_dir),
        *_numbers(tool, old, new, "inputs."),
        *_scalar(tool, "output.required", old.output.required, new.output.required),
        *_numbers(tool, old, new, "output."),
        *_numbers(tool, old, new, "limits."),
        *_network(tool, old.network, new.network),
        *_runtime(tool, old.runtime, new.runtime),
        *_scalar(tool, "user", old.user, new.user),
        *_mapping(tool, "env", old.env, new.env),
        *_mapping(tool, "justification", old.justification, new.justification),
    ]


def baseline_changes(old: Baseline, new: Baseline) -> list[Change]:
    """Baseline changes: raising a ceiling or threshold loosens every policy's check."""
    tool = BASELINE_TOOL
    changes = []
    for field in BOUNDED_FIELDS:
        for kind, before, after in (
            ("justify_above", old.threshold(field), new.threshold(field)),
            ("ceilings", old.ceiling(field), new.ceiling(field)),
        ):
            if before != after:
                changes.append(
                    Change(tool, f"{kind}.{field}", _higher_looser(before, after), before, after)
                )
    if old.min_uid != new.min_uid:
        direction: Direction = "loosening" if new.min_uid < old.min_uid else "tightening"
        changes.append(Change(tool, "min_uid", direction, old.min_uid, new.min_uid))
    changes += _set_change(tool, "runtimes", old.runtimes, new.runtimes, more_is_looser=True)
    changes += _set_change(
        tool, "required_limits", old.required_limits, new.required_limits, more_is_looser=False
    )
    return changes


def _set_change(
    tool: str, field: str, old: Sequence[str], new: Sequence[str], *, more_is_looser: bool
) -> list[Change]:
    added, removed = set(new) - set(old), set(old) - set(new)
    if not added and not removed:
        return []
    grew = bool(added) and not removed
    shrank = bool(removed) and not added
    direction: Direction = "loosening"  # mixed changes count as loosening: a reviewer looks
    if (grew and not more_is_looser) or (shrank and more_is_looser):
        direction = "tightening"
    return [Change(tool, field, direction, sorted(old), sorted(new))]


def diff_sets(
    old: dict[str, LoadedPolicy],
    new: dict[str, LoadedPolicy],
    old_baseline: Baseline,
    new_baseline: Baseline,
) -> list[Change]:
    """Every change from OLD to NEW: baseline first, then tools by name."""
    changes = baseline_changes(old_baseline, new_baseline)
    for tool in sorted(old.keys() | new.keys()):
        if tool not in old:
            changes.append(Change(tool, "policy", "loosening", None, new[tool].path.name))
        elif tool not in new:
            changes.append(Change(tool, "policy", "tightening", old[tool].path.name, None))
        else:
            directory = new[tool].path.parent
            on_disk = directory if directory.is_dir() else None
            changes += policy_changes(tool, old[tool].policy, new[tool].policy, on_disk)
    return changes


def loosens(changes: list[Change]) -> bool:
    return any(change.direction == "loosening" for change in changes)


def _value(value: Any) -> str:
    if value is None:
        return "(absent)"
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value)


def _change_text(change: Change) -> str:
    if change.field == "policy" and change.old is None:
        hint = f"read `sandbox policy explain {change.tool}`"
        return f"{change.direction:<10}  {change.tool}: policy added ({change.new}; {hint})"
    if change.field == "policy":
        return f"{change.direction:<10}  {change.tool}: policy removed ({change.old})"
    return (
        f"{change.direction:<10}  {change.tool}: {change.field}: "
        f"{_value(change.old)} -> {_value(change.new)}"
    )


def render_text(changes: list[Change], old_label: str, new_label: str) -> str:
    lines = [f"policy diff {old_label} -> {new_label}"]
    lines += [_change_text(change) for change in changes]
    counts = {d: sum(1 for c in changes if c.direction == d) for d in _DIRECTIONS}
    if changes:
        lines.append(", ".join(f"{n} {d}" for d, n in counts.items()))
    else:
        lines.append("no security-relevant changes")
    return "\n".join(lines) + "\n"


def report_json(changes: list[Change], old_label: str, new_label: str) -> dict[str, Any]:
    return {
        "old": old_label,
        "new": new_label,
        "loosens": loosens(changes),
        "summary": {d: sum(1 for c in changes if c.direction == d) for d in _DIRECTIONS},
        "changes": [asdict(change) for change in changes],
    }


def render_json(changes: list[Change], old_label: str, new_label: str) -> str:
    return json.dumps(report_json(changes, old_label, new_label), indent=2) + "\n"
