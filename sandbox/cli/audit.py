"""``sandbox audit verify|tail``: check the audit log's hash chain; show recent runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..audit import default_path, tail, verify
from . import count_at_least


def _path(args: argparse.Namespace) -> Path:
    # `sandbox --audit-log P audit verify` and `sandbox audit verify --file P` both work.
    chosen = getattr(args, "file", None) or getattr(args, "audit_log", None)
    return Path(chosen) if chosen else default_path()


def cmd_verify(args: argparse.Namespace) -> int:
    result = verify(_path(args))
    if args.json:
        print(
            json.dumps(
                {
                    "path": str(result.path),
                    "ok": result.ok,
                    "lines": result.lines,
                    "problems": [{"line": p.line, "message": p.message} for p in result.problems],
                },
                indent=2,
            )
        )
    elif result.ok:
        print(f"ok: {result.path}: {result.lines} record(s), hash chain intact")
    else:
        print(f"TAMPERED: {result.path}: {len(result.problems)} problem(s)")
        for problem in result.problems:
            print(f"  line {problem.line}: {problem.message}")
    return 0 if result.ok else 1


def _row(record: dict[str, Any]) -> str:
    code = record.get("exit_code")
    return (
        f"{record.get('ts', '?'):<25} {record.get('run_id', '?')[:12]:<12} "
        f"{record.get('tool') or '-':<16} {record.get('status', '?'):<20} "
        f"exit={'-' if code is None else code:<4} {record.get('duration_s', 0):>8.3f}s "
        f"uid={record.get('caller', {}).get('uid', '?')}"
    )


def cmd_tail(args: argparse.Namespace) -> int:
    path = _path(args)
    if not path.exists():
        print(f"sandbox: no audit log at {path}")
        return 1
    records = tail(path, args.n)
    if args.json:
        for record in records:
            print(json.dumps(record, sort_keys=True))
    else:
        for record in records:
            print(_row(record))
    return 0


def register(commands: Any) -> None:
    audit = commands.add_parser("audit", help="check the audit log's hash chain; recent runs")
    sub = audit.add_subparsers(dest="audit_command", required=True)
    verify_cmd = sub.add_parser("verify", help="non-zero exit on any edit, deletion or reorder")
    verify_cmd.add_argument(
        "--file", metavar="PATH", help="the audit log (default: see --audit-log)"
    )
    verify_cmd.add_argument("--json", action="store_true")
    verify_cmd.set_defaults(handler=cmd_verify)
    tail_cmd = sub.add_parser("tail", help="the most recent runs")
    tail_cmd.add_argument(
        "-n", type=count_at_least(0), default=10, metavar="N", help="how many (default 10)"
    )
    tail_cmd.add_argument("--file", metavar="PATH", help="the audit log (default: see --audit-log)")
    tail_cmd.add_argument("--json", action="store_true", help="one JSON record per line")
    tail_cmd.set_defaults(handler=cmd_tail)
