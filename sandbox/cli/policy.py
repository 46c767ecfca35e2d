"""``sandbox policy check|audit|explain|diff|schema``: policy review for security reviewers and
a CI gate. Thin: arguments in, ``sandbox.review`` does the work, a report on stdout, an exit code.

Exit codes: 0 clean; 1 ``check`` found something, ``diff`` found a loosening, or ``audit`` met a
file that does not parse; 2 usage or an unreadable policy set (the SandboxError mapping).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import PolicyDenied
from . import policy_dir

# sandbox.review is imported inside the handlers: every `sandbox` invocation imports this module
# to register the commands, and `sandbox run` should not pay for the review tooling.


def _directory(args: argparse.Namespace) -> Path:
    return Path(args.dir) if args.dir else policy_dir(args)


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def cmd_check(args: argparse.Namespace) -> int:
    from ..review import check, sarif
    from ..review.roots import Host
    from ..review.source import read_dir, read_source

    override = read_source(Path(args.baseline)) if args.baseline else None
    report = check.check_set(read_dir(_directory(args)), Host.current(), override)
    if args.format == "json":
        _write(check.render_json(report))
    elif args.format == "sarif":
        _write(sarif.render_sarif(report, Path.cwd()))
    else:
        _write(check.render_text(report))
    return 0 if report.ok else 1


def cmd_audit(args: argparse.Namespace) -> int:
    from ..review import audit, audit_md
    from ..review.roots import Host
    from ..review.source import read_dir

    report = audit.audit_set(read_dir(_directory(args)), Host.current())
    if args.format == "json":
        _write(json.dumps(audit.report_json(report), indent=2) + "\n")
    else:
        _write(audit_md.render_md(report))
    return 1 if report.unparsed else 0


def cmd_explain(args: argparse.Namespace) -> int:
    from ..review import audit, explain
    from ..review.roots import Host
    from ..review.source import read_dir

    directory = policy_dir(args)
    report = audit.audit_set(read_dir(directory), Host.current())
    entry = next((e for e in report.entries if e.tool == args.tool), None)
    if entry is None:
        unparsed = [f.text() for f in report.unparsed if Path(f.path).stem == args.tool]
        why = unparsed[0] if unparsed else f"no policy for tool {args.tool!r} in {directory}"
        raise PolicyDenied(why, tool=args.tool, fix="run `sandbox tools` to list the tools")
    if args.format == "json":
        _write(json.dumps(explain.explain_json(entry), indent=2) + "\n")
    else:
        _write(explain.render_text(entry))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from ..review import diff
    from ..review.source import load_all, load_baseline, read_location

    default, cwd = policy_dir(args), Path.cwd()
    old = read_location(args.old, default, cwd)
    new = read_location(args.new, default, cwd, required=True)
    changes = diff.diff_sets(
        load_all(old), load_all(new), load_baseline(old.baseline), load_baseline(new.baseline)
    )
    render = diff.render_json if args.format == "json" else diff.render_text
    _write(render(changes, old.label, new.label))
    return 1 if diff.loosens(changes) else 0


def cmd_schema(args: argparse.Namespace) -> int:
    from ..review import schema

    _write(schema.render_schema())
    return 0


def _tool_name(text: str) -> str:
    from ..policy import TOOL_NAME_RE

    if not TOOL_NAME_RE.fullmatch(text):
        msg = f"{text!r} is not a valid tool name"
        raise argparse.ArgumentTypeError(msg)
    return text


def register(commands: Any) -> None:
    group = commands.add_parser(
        "policy", help="policy review: check (CI gate), audit, explain, diff, schema"
    )
    # The parent's parser class, so usage errors here take the CLI's usual path (exit 2).
    sub = group.add_subparsers(dest="policy_command", required=True, parser_class=type(group))

    p = sub.add_parser("check", help="baseline rules; exit 1 on any finding")
    p.add_argument("dir", nargs="?", metavar="DIR", help="policy directory (default: --policies)")
    p.add_argument("--format", choices=["text", "json", "sarif"], default="text")
    p.add_argument("--baseline", metavar="FILE", help="baseline file (default: DIR/baseline.yaml)")
    p.set_defaults(handler=cmd_check)

    p = sub.add_parser("audit", help="reviewer report: settings, relaxations, risk per tool")
    p.add_argument("dir", nargs="?", metavar="DIR", help="policy directory (default: --policies)")
    p.add_argument("--format", choices=["md", "json"], default="md")
    p.set_defaults(handler=cmd_audit)

    p = sub.add_parser("explain", help="one tool's engine call: SDK kwargs and docker CLI")
    p.add_argument("tool", metavar="TOOL", type=_tool_name)
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(handler=cmd_explain)

    p = sub.add_parser("diff", help="security-relevant changes; exit 1 when anything loosens")
    p.add_argument("old", metavar="OLD", help="directory, git:REF or git:REF:PATH")
    p.add_argument("new", metavar="NEW", help="directory, git:REF or git:REF:PATH")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(handler=cmd_diff)

    p = sub.add_parser("schema", help="JSON Schema of the policy format")
    p.set_defaults(handler=cmd_schema)
