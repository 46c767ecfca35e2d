"""Every hostile run of the attack suite, by name: the testkit case and request it makes. The
tests (``test_*.py`` beside this file) say what must come of each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Case:
    """One ``sandbox run``: testkit ``args`` and CLI ``flags`` (``{data}``, ``{mnt}``, ``{out}``
    are the input roots and a fresh output dir), or a whole ``argv`` after ``run``."""

    args: dict[str, Any] = field(default_factory=dict)
    flags: tuple[str, ...] = ()
    policy: str = "default"
    argv: tuple[str, ...] | None = None
    stdin: bytes | None = None
    cost: int = 1  # rough seconds; the slow ones start first


def _t(case: str, *flags: str, cost: int = 1, **args: Any) -> Case:
    return Case(args={"case": case, **args}, flags=flags, cost=cost)


DEADLINE = ("--timeout", "3")

# The "exec" policy runs ``args.message`` as Python (the testkit image, another command): attacks
# the image's cases do not cover, without rebuilding the image.
EXEC_RUNNER = "import sys,json;r=json.loads(sys.stdin.readline());exec(r['args']['message'])"


def _py(code: str, *flags: str, cost: int = 1) -> Case:
    return Case(args={"message": code}, flags=flags, policy="exec", cost=cost)


def _nested(levels: int) -> str:
    """Python entering ``levels`` nested directories of 253-byte names under /output, by
    relative chdir (so past PATH_MAX too)."""
    return (
        "import os\n"
        "os.chdir('/output')\n"
        f"for i in range({levels}):\n"
        "    n = 'd%02d' % i + 'x' * 250\n"
        "    os.mkdir(n); os.chdir(n)\n"
    )


CASES: dict[str, Case] = {
    # --- resources ---------------------------------------------------------------------------
    "fork_bomb": _t("forkbomb", cost=3),
    "thread_bomb": _t("threadbomb"),
    # A child Python's large print to the stdout it inherits, which becomes a log line (gVisor
    # writes the container's output pipe in pieces of 64 KiB, which an unbuffered stream drops).
    "child_large_print": _py(
        "import subprocess, sys\n"
        "subprocess.run([sys.executable, '-c', 'print(\"q\" * 200000)'], check=True)\n"
    ),
    # What tools need of threads (dbt, DuckDB, pyarrow): a few start and finish, in any runtime.
    "threads": _py(
        "import json, threading\n"
        "done = []\n"
        "ts = [threading.Thread(target=done.append, args=(i,)) for i in range(8)]\n"
        "for t in ts: t.start()\n"
        "for t in ts: t.join()\n"
        "print(json.dumps({'type': 'result', 'payload': {'threads': len(done)}}))\n"
    ),
    # The run's stdout pipe, from the inside: a named pipe on a read-only mount, writable (it
    # is the tool's stdout, reopened or not) and nothing else.
    "stdout_pipe": _py(
        "import errno, json, os, stat\n"
        "p = '/run/sandbox/stdout'\n"
        "def attempt(f):\n"
        "    try:\n"
        "        f()\n"
        "        return 'ok'\n"
        "    except OSError as e:\n"
        "        return errno.errorcode[e.errno]\n"
        "if not os.path.exists(p):  # runsc: stdout goes through the engine\n"
        "    print(json.dumps({'type': 'result', 'payload': {'absent': True}}))\n"
        "    raise SystemExit\n"
        "st = os.stat(p)\n"
        "found = {\n"
        "    'fifo': stat.S_ISFIFO(st.st_mode),\n"
        "    'read': attempt(lambda: os.close(os.open(p, os.O_RDONLY | os.O_NONBLOCK))),\n"
        "    'rdwr': attempt(lambda: os.close(os.open(p, os.O_RDWR | os.O_NONBLOCK))),\n"
        "    'chmod': attempt(lambda: os.chmod(p, 0o666)),\n"
        "    'unlink': attempt(lambda: os.unlink(p)),\n"
        "    'mount': [m.split()[3].split(',')[0] for m in open('/proc/self/mounts')\n"
        "              if m.split()[1] == p],\n"
        "}\n"
        "fd = os.open(p, os.O_WRONLY)\n"
        'os.write(fd, b\'{"type": "data", "payload": "reopened"}\\n\')\n'
        "os.close(fd)\n"
        "print(json.dumps({'type': 'result', 'payload': found}))\n"
    ),
    "memory_bomb": _t("memory", cost=3, mb=2000),
    "tmpfs_fill": _t("tmpfs_fill"),
    "output_fill": _t("fill_output", "--output", "{out}", cost=3, files=50, mb_per_file=1),
    "fsize_one_huge_file": _t("fsize", mb=64),
    "fsize_in_output": _t("fsize", "--output", "{out}", mb=64, message="/output/huge"),
    "inode_exhaustion": _t("inodes", "--output", "{out}", "--timeout", "20", cost=15),
    "fd_exhaustion": _t("fds"),
    "cpu_spin": _t("spin", *DEADLINE, cost=4),
    "sleeper": _t("sleep", *DEADLINE, cost=4, seconds=600),
    "sigterm_ignorer": _t("ignore_sigterm", *DEADLINE, cost=4),
    # --- stream ------------------------------------------------------------------------------
    "stdout_flood": _t("flood", cost=3, mb=200),
    "giant_line": _t("giant_line", cost=2, mb=3),
    "invalid_utf8": _t("invalid_utf8"),
    "hostile_frames": _t("hostile_frames"),
    "forged_exit": _t("forge_exit"),
    "ansi_crlf_injection": _t("raw_prints"),
    # --- escape surface ----------------------------------------------------------------------
    "identity": _t("whoami", "--output", "{out}"),
    "rootfs_write": _t("rootfs_write"),
    "exec_from_tmp": _t("exec_tmp"),
    "setuid": _t("setuid_probe"),
    "proc_probe": _t("proc_probe"),
    "sys_probe": _t("sys_probe"),
    "cgroup_release_agent": _t("cgroup_escape"),
    "namespaces": _t("namespaces"),
    "clock": _t("clock"),
    "ulimits": _t("ulimits"),
    "keyctl": _t("keyctl"),
    "sockets": _t("sockets"),
    "egress": _t("egress"),
    "kernel_syscalls": _t("syscalls"),
    "devices": _t("devices"),
    "docker_socket": _t("docker_socket", "--input", "data={data}"),
    "environment_harvest": _t("env_harvest"),
    "daemonize": _t("daemonize", message="987.654"),
    # Thirty forked Pythons under gVisor, on a host busy with the rest of the suite, can pass
    # 128 MiB (4 of 12 such runs were OOM-killed); this case is about reaping, not memory.
    "zombies": Case(args={"case": "zombies", "count": 30}, policy="roomy"),
    # --- outputs -----------------------------------------------------------------------------
    "output_link_tricks": _t("link_tricks", "--output", "{out}", "--input", "data={data}"),
    "output_links_fifo_hardlink": _t("write_outputs", "--output", "{out}"),
    # 30 files of 7 MiB (each under fsize) below paths the host cannot open by name.
    "output_fill_past_path_max": _py(
        _nested(20) + "for f in range(30):\n"
        "    with open(f'f{f}', 'wb') as fh:\n"
        "        for _ in range(7): fh.write(b'z' * (1 << 20))\n"
        "import time; time.sleep(2)\n",
        "--output",
        "{out}",
        cost=3,
    ),
    # Ten directories of 253-byte names: under PATH_MAX, over the 1024 bytes published.
    "output_path_too_long": _py(
        _nested(10) + "open('deep.txt', 'w').write('x')\nopen('/output/top.txt', 'w').write('y')\n",
        "--output",
        "{out}",
    ),
    # 4,000 names of 240 bytes: a listing of about 1.2 MB, over the 1 MiB frame line limit.
    "output_listing_over_frame_limit": _py(
        "for i in range(4000): open('/output/%04d' % i + 'y' * 236, 'w').close()\n",
        "--output",
        "{out}",
        cost=2,
    ),
    # --- requests (refused before any container) ---------------------------------------------
    "input_dotdot": _t("echo", "--input", "data={data}/../.."),
    "input_tilde": _t("echo", "--input", "data=~"),
    "input_symlink_out": _t("echo", "--input", "data={data}/link-out"),
    "input_missing": _t("echo", "--input", "data={data}/missing"),
    "input_etc": _t("echo", "--input", "data=/etc"),
    "input_proc_root": _t("echo", "--input", "data=/proc/self/root"),
    "input_bad_name": _t("echo", "--input", "../x={data}"),
    "input_mount_point": _t("echo", "--input", "data={mnt}"),
    "input_docker_socket": Case(
        args={"case": "echo"}, flags=("--input", "sock=/var/run/docker.sock"), policy="var_run_root"
    ),
    "input_dir_with_docker_socket": Case(
        args={"case": "echo"}, flags=("--input", "run=/var/run"), policy="var_run_root"
    ),
    "input_nul": Case(
        argv=("--request", "-"),
        stdin=b'{"tool":"testkit","args":{"case":"echo"},"inputs":{"d":"/tmp\\u0000x"}}',
    ),
    "args_shell_metachars": _t("echo", message="; rm -rf / # $(id) `id` | cat /etc/shadow &"),
    "args_leading_dash": _t("echo", message="--privileged -v /:/host"),
    "args_newlines_nul": _t("echo", message='a\nb\r\n{"type":"exit","status":"ok"}\n\u0000z'),
    "args_huge_string_ok": _t("arg_digest", message="x" * 100_000),
    "args_huge_string_too_long": _t("echo", message="x" * 100_001),
    "args_unknown_key": Case(args={"case": "echo", "privileged": True}),
    "tool_name_injection": Case(argv=("testkit;id",)),
    "tool_name_traversal": Case(argv=("../policies/testkit",)),
    "timeout_above_policy": _t("echo", "--timeout", "99999"),
    "timeout_nan": _t("echo", "--timeout", "nan"),
    "request_unknown_key": Case(
        argv=("--request", "-"), stdin=b'{"tool":"testkit","args":{},"privileged":true}'
    ),
    "request_nan": Case(
        argv=("--request", "-"), stdin=b'{"tool":"testkit","args":{"case":"echo"},"timeout_s":NaN}'
    ),
    "request_deep_nesting": Case(
        argv=("--request", "-"),
        stdin=b'{"tool":"testkit","args":{"payload":' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
    ),
    "memory_never_fits": Case(args={"case": "echo"}, policy="huge_memory"),
}

# --- hostile policy files: each a transformation of a valid policy's YAML text ----------------


def _add(text: str) -> Callable[[str], str]:
    return lambda base: base + text


def _replace(old: str, new: str) -> Callable[[str], str]:
    def go(base: str) -> str:
        assert old in base, old
        return base.replace(old, new, 1)

    return go


HOSTILE_POLICIES: dict[str, Callable[[str], str]] = {
    "python_tag": _add("extra: !!python/object/apply:os.system ['touch /tmp/pwned']\n"),
    "alias_bomb": lambda base: (
        'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
        + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}]\n" for i in range(8))
        + base
    ),
    "huge_file": lambda base: base + "# " + "x" * (300 * 1024) + "\n",
    "privileged": _add("privileged: true\n"),
    "cap_add": _add("cap_add: [SYS_ADMIN]\n"),
    "network_host": _replace("network: none", "network: host"),
    "network_container": _replace("network: none", "network: container:other"),
    "pid_host": _add("pid_mode: host\n"),
    "ipc_host": _add("ipc_mode: host\n"),
    "devices": _add("devices: ['/dev/mem:/dev/mem']\n"),
    "seccomp_unconfined": _add("security_opt: ['seccomp=unconfined']\n"),
    "docker_sock_volume": _add("volumes: ['/var/run/docker.sock:/var/run/docker.sock']\n"),
    "root_user": _replace("user: 65532:65532", 'user: "0:0"'),
    "limits_unknown_key": _replace("  pids: 64\n", "  pids: 64\n  privileged: true\n"),
    "duplicate_key": _add("runtime: runc\n"),
}
for _variant in HOSTILE_POLICIES:
    CASES[f"policy_{_variant}"] = Case(args={"case": "echo"}, policy=_variant)
