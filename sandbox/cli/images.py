"""``sandbox images build|lock|scan|env``: build the per-tool images, pin their ids into the
policies, scan them (JSON, SARIF, CycloneDX), and print the variables compose.yaml needs.

Exit codes: 0 ok; 1 a scan finding at/above ``--fail-on`` (or an incomplete scan), a pin that
differs under ``lock --check``, or a failed build step; 2 usage; 6 engine trouble.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, get_args

from ..errors import SandboxError
from ..log import logger
from . import policy_dir

DEFAULT_OUTPUT = "out/images-scan"
ADVISORY_DB_ENV = "SANDBOX_ADVISORY_DB"


def register(commands: Any) -> None:
    images = commands.add_parser("images", help="build, pin (lock) and scan the tool images")
    sub = images.add_subparsers(dest="images_command", required=True)
    _register_build(sub)
    _register_lock(sub)
    _register_scan(sub)
    env = sub.add_parser("env", help="KEY=VALUE lines for `docker compose --env-file`")
    env.set_defaults(handler=cmd_env)


def _register_build(sub: Any) -> None:
    build = sub.add_parser("build", help="build base and the tool images (docker SDK, streamed)")
    build.add_argument("tools", nargs="*", metavar="TOOL", help="tool or image names (default all)")
    build.add_argument("--json", action="store_true", help="JSON event lines on stdout")
    build.add_argument("--no-cache", action="store_true")
    build.add_argument("-v", "--verbose", action="store_true", help="show every build log line")
    build.add_argument(
        "--prefix",
        default=None,
        help="tag a side set PREFIX + NAME:latest (base included, e.g. sandbox-staging/) "
        "instead of the policies' image names",
    )
    build.set_defaults(handler=cmd_build)


def _register_lock(sub: Any) -> None:
    lock = sub.add_parser("lock", help="pin the local image ids into the policies (prints a diff)")
    lock.add_argument("--check", action="store_true", help="exit 1 if a pin differs; write nothing")
    lock.set_defaults(handler=cmd_lock)


def _register_scan(sub: Any) -> None:
    from ..scan.model import FailOn, Severity

    scan = sub.add_parser("scan", help="lint, inspect and scan images; JSON/SARIF/SBOM reports")
    scan.add_argument("tools", nargs="*", metavar="TOOL", help="tools to scan (default all + base)")
    scan.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="REF[=DIR]",
        help="scan this image; DIR holds its Dockerfile and *.lock (default images/NAME)",
    )
    scan.add_argument(
        "--format",
        choices=["text", "json", "sarif"],
        default="text",
        help="what stdout carries (the files are always written)",
    )
    scan.add_argument(
        "--output",
        default=DEFAULT_OUTPUT,
        metavar="DIR",
        help=f"report.json, report.sarif and SBOMs (default {DEFAULT_OUTPUT})",
    )
    scan.add_argument(
        "--advisory-db", metavar="PATH", help=f"OSV directory or zip (default ${ADVISORY_DB_ENV})"
    )
    scan.add_argument("--online", action="store_true", help="also query the OSV service")
    scan.add_argument("--osv-url", default=None, metavar="URL", help="OSV service base URL")
    scan.add_argument("--fail-on", choices=get_args(FailOn), default="high")
    scan.add_argument(
        "--unknown-severity",
        choices=[s.value for s in Severity if s.rank > 0],
        default="high",
        help="rank of advisories that state no severity",
    )
    scan.add_argument(
        "--allow-incomplete", action="store_true", help="exit 0 even when a check could not run"
    )
    scan.set_defaults(handler=cmd_scan)


# --- build ------------------------------------------------------------------------------------


class _BuildPrinter:
    """Build events as JSON lines on stdout, or short progress lines on stderr."""

    def __init__(self, as_json: bool, verbose: bool) -> None:
        self.as_json = as_json
        self.verbose = verbose

    def __call__(self, event: dict[str, Any]) -> None:
        if self.as_json:
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()
        elif event["type"] == "progress":
            where = f" {event['step']}/{event['steps']}" if event.get("steps") else ""
            print(f"[{event['image']}]{where} {event['message']}", file=sys.stderr)
        elif event["type"] == "built":
            print(f"[{event['image']}] built {event['id']}", file=sys.stderr)
        elif self.verbose and event["type"] == "log":
            print(f"    {event['line']}", file=sys.stderr)


def cmd_build(args: argparse.Namespace) -> int:
    from .. import images
    from ..policy import load_policy_dir

    root = images.repo_root()
    plans = images.plan_images(load_policy_dir(policy_dir(args)), args.tools, root, args.prefix)
    printer = _BuildPrinter(args.json, args.verbose)
    try:
        images.build_images(images.connect(), root, plans, printer, nocache=args.no_cache)
    except images.BuildFailed as exc:
        _print_failure(exc, printer)
        return 1
    return 0


def _print_failure(exc: SandboxError, printer: _BuildPrinter) -> None:
    log = list(exc.details.get("log") or [])
    if printer.as_json:
        printer({"type": "error", "message": exc.message, "details": exc.details})
    print(f"sandbox images build: {exc}", file=sys.stderr)
    print(f"--- log of the failing step ({exc.details.get('step')}) ---", file=sys.stderr)
    for line in log:
        print(f"    {line}", file=sys.stderr)


# --- lock -------------------------------------------------------------------------------------


def cmd_lock(args: argparse.Namespace) -> int:
    from .. import images
    from ..policy import policy_files

    changes = images.plan_lock(images.connect(), policy_files(policy_dir(args)))
    status = 0
    for change in changes:
        if change.local is None:
            print(f"{change.tool}: image {change.image} is not built", file=sys.stderr)
            status = 1
        elif change.current:
            print(f"{change.tool}: {change.image} pinned to {change.local}", file=sys.stderr)
        else:
            sys.stdout.write(change.diff)
            if args.check:
                print(
                    f"{change.tool}: pin {change.pinned} != local {change.local}", file=sys.stderr
                )
                status = 1
            else:
                images.apply_lock(change)
                print(f"{change.tool}: pinned {change.local}", file=sys.stderr)
    return status


# --- scan -------------------------------------------------------------------------------------


def _targets(args: argparse.Namespace, root: Path) -> list[Any]:
    from .. import images
    from ..docker_runtime import short_name
    from ..policy import load_policy_dir
    from ..scan.config import PolicyCommand
    from ..scan.runner import ScanTarget

    targets = []
    for item in args.image:
        ref, _, directory = item.partition("=")
        source = Path(directory) if directory else root / "images" / short_name(ref)
        targets.append(ScanTarget(images.tagged(ref), source if source.is_dir() else None))
    if args.image and not args.tools:
        return targets
    policies = load_policy_dir(policy_dir(args))
    plans = images.plan_images(policies, args.tools, root)
    for plan in plans:
        if args.tools and plan.name == images.BASE:
            continue  # scanning named tools: their images, not base
        loaded = [policies[t] for t in plan.tools]
        commands = tuple(
            PolicyCommand(lp.policy.tool, tuple(lp.policy.command), lp.policy.env) for lp in loaded
        )
        pins = {lp.policy.tool: lp.policy.image.id for lp in loaded}
        targets.append(ScanTarget(plan.tag, root / "images" / plan.name, commands, pins))
    return targets


def _options(args: argparse.Namespace, root: Path) -> Any:
    from ..scan.model import Severity
    from ..scan.online import DEFAULT_URL, OnlineSession
    from ..scan.osv import AdvisoryIndex, load_database
    from ..scan.runner import ScanOptions

    db_path = args.advisory_db or os.environ.get(ADVISORY_DB_ENV)
    index, db = load_database(Path(db_path)) if db_path else (None, None)
    if index is None and args.online:
        index = AdvisoryIndex()  # the service alone fills it
    return ScanOptions(
        repo_root=root,
        output_dir=Path(args.output),
        fail_on=args.fail_on,
        unknown_severity=Severity(args.unknown_severity),
        index=index,
        db=db,
        online=OnlineSession(args.osv_url or DEFAULT_URL) if args.online else None,
    )


def cmd_scan(args: argparse.Namespace) -> int:
    from .. import images
    from ..scan.runner import iter_scans, write_outputs

    root = images.repo_root()
    targets = _targets(args, root)
    options = _options(args, root)
    source = images.DockerImageSource(images.connect())
    scans = []
    for scan in iter_scans(source, targets, options):
        logger.info("{}: {}", scan.report.image, scan.report.verdict)
        scans.append(scan)
    report = write_outputs(scans, options)
    if report.online.status == "unreachable":
        logger.warning("OSV service unreachable ({}): offline results only", report.online.detail)
    _print_report(report, args.format, Path(args.output))
    if report.verdict == "fail":
        return 1
    return 1 if report.verdict == "incomplete" and not args.allow_incomplete else 0


def _print_report(report: Any, fmt: str, output: Path) -> None:
    if fmt == "json":
        print((output / "report.json").read_text(encoding="utf-8"), end="")
    elif fmt == "sarif":
        print((output / "report.sarif").read_text(encoding="utf-8"), end="")
    else:
        print(render_text(report, output))


def render_text(report: Any, output: Path) -> str:
    lines = []
    for image in report.images:
        lines.append(f"{image.image}  {image.image_id[:19]}  {image.verdict.upper()}")
        lines += [f"  {c.name:<16} {c.status:<15} {c.summary}" for c in image.checks]
        lines += [
            f"  {f.severity.value.upper():<8} {f.rule_id}: {f.message}" for f in image.findings
        ]
        lines.append(f"  sbom: {image.sbom}")
    db = report.advisory_db
    if db is not None:
        lines.append(
            f"advisory db: {db.path} ({db.advisories} advisories, newest "
            f"{(db.newest_modified or '?')[:10]}, commit {db.commit or 'unknown'}, "
            f"sha256 {db.sha256[:12]})"
        )
    else:
        lines.append("advisory db: none (known vulnerabilities NOT checked)")
    if report.online.status != "disabled":
        lines.append(
            f"online: {report.online.status} {report.online.url} {report.online.detail or ''}"
        )
    lines.append(f"reports: {output / 'report.json'}, {output / 'report.sarif'}")
    lines.append(f"verdict: {report.verdict.upper()} (fail-on {report.fail_on})")
    return "\n".join(lines)


# --- env --------------------------------------------------------------------------------------


def cmd_env(args: argparse.Namespace) -> int:
    from .. import images
    from ..policy import load_policy_dir

    root = images.repo_root()
    plans = images.plan_images(load_policy_dir(policy_dir(args)), [], root)
    for key, value in images.compose_env(root, [p.name for p in plans]).items():
        print(f"{key}={value}")
    return 0
