"""The ``policy audit`` report as Markdown: one page a reviewer reads instead of the code.

A summary table, then per tool: facts, risk reasons, relaxations with their justifications,
check findings and the exact engine settings. Pure.
"""

from __future__ import annotations

import html
import json
import shlex
from typing import Any

from .audit import AuditEntry, AuditReport
from .catalog import printable
from .relax import number


def _text(text: str) -> str:
    """Policy text as one line of Markdown text: a line break would let it start a line of its
    own (``<!--`` hides the rest of the rendered report, ``##`` forges a section), and HTML in
    it is shown, not rendered."""
    return html.escape(printable(" ".join(text.split())), quote=False)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return _text(text).replace("|", "\\|")


def _mib(value_bytes: int) -> str:
    return f"{number(value_bytes / (1024 * 1024))} MiB"


def _relaxation_count(entry: AuditEntry) -> str:
    unjustified = sum(1 for r in entry.relaxations if r.justification is None)
    total = len(entry.relaxations)
    return f"{total} ({unjustified} unjustified)" if unjustified else str(total)


def _summary_row(entry: AuditEntry) -> str:
    kw: dict[str, Any] = entry.create_kwargs
    cells = [
        f"`{entry.tool}`",
        entry.risk.level,
        kw["network_mode"],
        kw["runtime"],
        kw["user"],
        _mib(kw["mem_limit"]),
        number(kw["nano_cpus"] / 1e9),
        str(kw["pids_limit"]),
        f"{number(entry.timeout_s)} s",
        f"{len(entry.input_roots)} root(s)" if entry.input_roots else "none",
        _relaxation_count(entry),
        str(len(entry.findings)),
    ]
    return "| " + " | ".join(cells) + " |"


def _summary(report: AuditReport) -> list[str]:
    header = (
        "| tool | risk | network | runtime | user | memory | cpus | pids | timeout | inputs "
        "| relaxations | findings |"
    )
    return [header, "|" + " --- |" * 12, *map(_summary_row, report.entries)]


def _facts(entry: AuditEntry) -> list[str]:
    command = printable(shlex.join(entry.command))
    lines = [
        f"- Policy: `{entry.file}` (sha256 `{entry.sha256}`)",
        f"- Image: `{entry.image}` pinned to `{entry.image_id}`",
        f"- Command: `{command}`",
    ]
    if entry.input_roots:
        roots = "; ".join(f"`{printable(w)}` → `{printable(r)}`" for w, r in entry.input_roots)
        lines.append(f"- Input roots (read-only): {roots}")
    else:
        lines.append("- Input roots: none (no host path can be mounted)")
    return lines


def _risk(entry: AuditEntry) -> list[str]:
    if not entry.risk.reasons:
        return ["- **low**: every setting is the strict default"]
    return [f"- **{reason.level}**: {printable(reason.text)}" for reason in entry.risk.reasons]


def _relaxations(entry: AuditEntry) -> list[str]:
    if not entry.relaxations:
        return ["None: every setting is at or below the strict defaults."]
    rows = ["| field | value | strict | justification |", "| --- | --- | --- | --- |"]
    for relax in entry.relaxations:
        reason = _cell(relax.justification) if relax.justification else "**missing**"
        rows.append(f"| `{relax.field}` | {_cell(relax.value)} | {relax.strict} | {reason} |")
    return rows


def _findings(entry: AuditEntry) -> list[str]:
    if not entry.findings:
        return ["None."]
    return [f"- `{f.rule}` line {f.line}: {_text(f.message)}" for f in entry.findings]


def _section(entry: AuditEntry) -> list[str]:
    settings = json.dumps(entry.create_kwargs, indent=2)
    return [
        f"## `{entry.tool}`: risk {entry.risk.level}",
        "",
        *([_text(entry.description), ""] if entry.description else []),
        *_facts(entry),
        "",
        "### Risk",
        "",
        *_risk(entry),
        "",
        "### Relaxations",
        "",
        *_relaxations(entry),
        "",
        "### Findings of `sandbox policy check`",
        "",
        *_findings(entry),
        "",
        "### Engine settings (`containers.create` keyword arguments)",
        "",
        "```json",
        settings,
        "```",
        "",
    ]


def render_md(report: AuditReport) -> str:
    lines = [
        f"# Policy audit: `{report.source}`",
        "",
        f"{len(report.entries)} tool(s); baseline: `{report.baseline}`. Engine settings are "
        "exactly what the coordinator passes to Docker for a request using every input and an "
        "output directory, on an image whose launcher takes the stdout pipe (a warm-pool or "
        "other image's container has no pipe mount and no `--stdout`); run-specific values "
        "are `<placeholders>`.",
        "",
        *_summary(report),
        "",
    ]
    if report.unparsed:
        lines += ["## Files that do not parse", ""]
        lines += [
            f"- `{printable(f.path)}:{f.line}` {f.rule}: {_text(f.message)}"
            for f in report.unparsed
        ]
        lines.append("")
    for entry in report.entries:
        lines += _section(entry)
    return "\n".join(lines).rstrip("\n") + "\n"
