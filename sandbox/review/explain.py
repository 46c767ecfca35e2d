"""``sandbox policy explain TOOL``: one tool's engine call, as the docker SDK kwargs and as an
equivalent ``docker create`` command line. Pure.

Every kwarg is either rendered as a CLI flag or listed as having no CLI equivalent: nothing is
dropped silently, so a new hardening kwarg in ``spec`` shows up here even before it has a flag.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from typing import Any

from .audit import AuditEntry, entry_json
from .catalog import printable

Flags = Callable[[Any], list[list[str]]]


def _option(flag: str) -> Flags:
    return lambda value: [[flag, str(value)]]


def _switch(flag: str) -> Flags:
    return lambda value: [[flag]] if value else []


def _each(flag: str) -> Flags:
    return lambda values: [[flag, str(v)] for v in values]


def _pairs(flag: str) -> Flags:
    return lambda mapping: [[flag, f"{k}={v}"] for k, v in sorted(mapping.items())]


def _mount(mount: dict[str, Any]) -> list[str]:
    spec = f"type={mount['Type'].lower()},source={mount['Source']},target={mount['Target']}"
    return ["--mount", spec + (",readonly" if mount.get("ReadOnly") else "")]


def _log(config: dict[str, Any]) -> list[list[str]]:
    options = [["--log-opt", f"{k}={v}"] for k, v in sorted(config.get("config", {}).items())]
    return [["--log-driver", str(config["type"])], *options]


_FLAGS: dict[str, Flags] = {
    "name": _option("--name"),
    "hostname": _option("--hostname"),
    "user": _option("--user"),
    "environment": _pairs("--env"),
    "labels": _pairs("--label"),
    "tty": _switch("--tty"),
    "stdin_open": _switch("--interactive"),
    "network_mode": _option("--network"),
    "read_only": _switch("--read-only"),
    "tmpfs": lambda mounts: [["--tmpfs", f"{p}:{o}"] for p, o in sorted(mounts.items())],
    "mounts": lambda mounts: [_mount(m) for m in mounts],
    "cap_drop": _each("--cap-drop"),
    "cap_add": _each("--cap-add"),
    "security_opt": _each("--security-opt"),
    "privileged": _switch("--privileged"),
    "init": _switch("--init"),
    "ipc_mode": _option("--ipc"),
    "shm_size": _option("--shm-size"),
    "cgroupns": _option("--cgroupns"),
    "mem_limit": _option("--memory"),
    "memswap_limit": _option("--memory-swap"),
    "mem_swappiness": _option("--memory-swappiness"),
    "oom_score_adj": _option("--oom-score-adj"),
    "nano_cpus": lambda nanos: [["--cpus", f"{nanos / 1e9:g}"]],
    "pids_limit": _option("--pids-limit"),
    "ulimits": lambda limits: [
        ["--ulimit", f"{u['name']}={u['soft']}:{u['hard']}"] for u in limits
    ],
    "log_config": _log,
    "runtime": _option("--runtime"),
    "auto_remove": _switch("--rm"),
}
# Kwargs the docker CLI has no flag for, and what that means for someone copying the command.
SDK_ONLY = {
    "network_disabled": "no flag; with --network none the container still has only loopback",
    "use_config_proxy": "no flag; the CLI adds proxy variables from ~/.docker/config.json",
}
_POSITIONAL = ("image", "command")


def docker_argv(kwargs: dict[str, Any]) -> tuple[list[list[str]], dict[str, str]]:
    """The ``docker create`` argv (grouped per option) and the kwargs it cannot express."""
    groups: list[list[str]] = [["docker", "create"]]
    gaps: dict[str, str] = {}
    for key, value in kwargs.items():
        if key in _POSITIONAL:
            continue
        if key in _FLAGS:
            groups += _FLAGS[key](value)
        else:
            note = SDK_ONLY.get(key, "not rendered by `policy explain`")
            gaps[key] = f"{json.dumps(value)}: {note}"
    groups.append([str(kwargs["image"]), *map(str, kwargs.get("command") or [])])
    return groups, gaps


def render_command(groups: list[list[str]]) -> str:
    """One option per line, shell-quoted, joined with backslash continuations (control
    characters in policy values shown as escapes, not sent to the terminal)."""
    return " \\\n    ".join(printable(shlex.join(group)) for group in groups)


def explain_json(entry: AuditEntry) -> dict[str, Any]:
    groups, gaps = docker_argv(entry.create_kwargs)
    return {
        **entry_json(entry),
        "docker_argv": [arg for group in groups for arg in group],
        "docker_cli_gaps": gaps,
    }


def render_text(entry: AuditEntry) -> str:
    groups, gaps = docker_argv(entry.create_kwargs)
    lines = [
        f"# {entry.tool}: risk {entry.risk.level} ({entry.file}, sha256 {entry.sha256})",
        *(f"#   {reason.level}: {printable(reason.text)}" for reason in entry.risk.reasons),
        *(
            printable(f"#   relaxed {r.field}: {r.value} -- {r.justification or 'UNJUSTIFIED'}")
            for r in entry.relaxations
        ),
        *(f"#   finding {f.rule} line {f.line}: {printable(f.message)}" for f in entry.findings),
        "",
        "# docker SDK: client.containers.create(**kwargs) with these kwargs",
        json.dumps(entry.create_kwargs, indent=2),
        "",
        "# the same as a docker CLI command line",
        render_command(groups),
    ]
    if gaps:
        lines += ["", "# kwargs without a docker CLI flag"]
        lines += [f"#   {key}={note}" for key, note in gaps.items()]
    return "\n".join(lines) + "\n"
