"""``sandbox doctor [--json]``: the host's fitness, one line per check, with the fix of each
failed one; exit 1 when any check fails."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

_MARK = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


def cmd_doctor(args: argparse.Namespace) -> int:
    from ..docker_runtime import DockerRuntime
    from ..doctor import evaluate, gather, healthy
    from . import audit_log, policy_dir

    checks = evaluate(gather(DockerRuntime(timeout_s=10), policy_dir(args), audit_log(args)))
    fit = healthy(checks)
    if args.json:
        print(json.dumps({"healthy": fit, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        for check in checks:
            print(f"{_MARK[check.status]} {check.name:<28} {check.detail}")
            if check.fix and check.status != "ok":
                print(f"     fix: {check.fix}")
        print("healthy" if fit else "UNHEALTHY: fix the FAIL lines above")
    return 0 if fit else 1


def register(commands: Any) -> None:
    doctor = commands.add_parser(
        "doctor", help="engine, runtimes, pinned images, memory/disk, audit log, known CVE fixes"
    )
    doctor.add_argument("--json", action="store_true")
    doctor.set_defaults(handler=cmd_doctor)
