"""Test cases for the coordinator, chosen by ``args.case``. Some speak protocol v1 through the
runtime module; the hostile ones write raw bytes to fd 1 or misbehave on purpose.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import decimal
import errno
import json
import os
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sandbox_runtime import Context, ToolError, run

# Hostile cases do not use the runtime: they write raw bytes to the real stdout (fd 1).
RAW_CASES = {
    "flood",
    "giant_line",
    "invalid_utf8",
    "forge_exit",
    "raw_prints",
    "hostile_frames",
    "close_streams",
}


def raw_write(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def case_echo(ctx: Context) -> Any:
    listing = {}
    for name, path in ctx.inputs.items():
        p = Path(path)
        listing[name] = sorted(x.name for x in p.iterdir()) if p.is_dir() else p.read_text()[:200]
    return {"args": ctx.args, "inputs": listing, "output_dir": ctx.output_dir, "run_id": ctx.run_id}


def case_frames(ctx: Context) -> Any:
    ctx.progress("starting", fraction=0.0)
    ctx.data({"n": 1})
    ctx.log("a log line")
    ctx.progress("half way", fraction=0.5)
    return {
        "when": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "day": dt.date(2024, 1, 2),
        "price": decimal.Decimal("12.50"),
        "nan": float("nan"),
        "inf": float("inf"),
        "blob": b"\x00\x01",
        "text": "héllo ✓",
    }


def case_raise(ctx: Context) -> Any:
    def inner() -> None:
        raise ValueError(ctx.args.get("message", "boom"))

    inner()


def case_tool_error(ctx: Context) -> Any:
    msg = "bad input"
    raise ToolError(msg, {"row": 3})


def case_exit(ctx: Context) -> Any:
    sys.stdout.flush()
    os._exit(int(ctx.args.get("code", 3)))


def case_close_streams(args: dict[str, Any]) -> None:
    """Close stdout and stderr, then keep running: the stream ends before the container."""
    raw_write(b'{"type":"progress","message":"closing my streams"}\n')
    os.close(1)
    os.close(2)
    time.sleep(float(args.get("seconds", 3600)))


def case_sleep(ctx: Context) -> Any:
    ctx.progress("sleeping")
    time.sleep(float(ctx.args.get("seconds", 3600)))
    return {"slept": True}


def case_memory(ctx: Context) -> Any:
    chunks = []
    for _ in range(int(ctx.args.get("mb", 100000))):
        chunks.append(bytearray(1024 * 1024))
    return {"allocated_mb": len(chunks)}


def case_forkbomb(ctx: Context) -> Any:
    children = 0
    try:
        while True:
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
            children += 1
    except OSError as exc:
        return {"children": children, "error": exc.strerror}


def case_forkbomb_crash(ctx: Context) -> Any:
    while True:  # no error handling: the tool dies when fork() fails at the pids limit
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)


def case_flood(args: dict[str, Any]) -> None:
    line = b"x" * 1023 + b"\n"
    block = line * 64
    for _ in range(int(args.get("mb", 1000)) * 16):
        raw_write(block)


def case_frame_flood(ctx: Context) -> Any:
    payload = "y" * 60000
    for i in range(int(ctx.args.get("count", 100))):
        ctx.data({"i": i, "pad": payload})
    return {"count": ctx.args.get("count", 100)}


def case_giant_line(args: dict[str, Any]) -> None:
    block = b"z" * (1024 * 1024)
    for _ in range(int(args.get("mb", 5))):
        raw_write(block)
    raw_write(b"\n")
    raw_write(b'{"type":"result","payload":{"after":"giant"}}\n')


def case_invalid_utf8(args: dict[str, Any]) -> None:
    raw_write(b"bad \xff\xfe bytes\n")
    raw_write(b'{"type":"data","payload":"\\ud800 lone"}\n')
    raw_write(b'{"type":"data","payload":NaN}\n')
    raw_write(b'{"type":"data","payload":"split \xe2\x9c')
    raw_write(b'\x93 char"}\n')
    raw_write(b"[" * 100000 + b"\n")
    raw_write(b'{"type":"result","payload":{"ok":true}}\n')


def case_raw_prints(args: dict[str, Any]) -> None:
    raw_write(b"plain text on stdout\n")
    raw_write(b'{"type":"result","payload":{"forged":true},"extra":1}\n')
    raw_write(b"\x1b[31mred\r\nfake line\n")
    raw_write(b'{"type":"result","payload":{"ok":true}}\n')


def case_prints(ctx: Context) -> Any:
    print("stray print goes to stderr")
    os.system("echo from a child process")  # noqa: S605, S607 - fixed command, on purpose
    return {"ok": True}


def case_forge_exit(args: dict[str, Any]) -> None:
    raw_write(b'{"v":1,"run_id":"x","seq":99,"type":"exit","status":"ok","exit_code":0}\n')
    raw_write(
        b'{"type":"error","error":{"kind":"Timeout","message":"fake","traceback":[],"details":{}}}\n'
    )
    raw_write(b'{"type":"result","payload":{"forged":true}}\n')
    os._exit(5)


def case_write_outputs(ctx: Context) -> Any:
    out = Path(ctx.output_dir or "/output")
    (out / "data").mkdir()
    (out / "data" / "a.csv").write_text("x,y\n1,2\n")
    (out / "report.txt").write_text("hello\n")
    if ctx.args.get("hostile", True):
        (out / "passwd-link").symlink_to("/etc/passwd")
        os.mkfifo(out / "pipe")
        os.link(out / "report.txt", out / "report-hardlink.txt")
    if ctx.args.get("fail"):
        msg = "failed after writing"
        raise ToolError(msg)
    return {"written": True}


def case_fill_output(ctx: Context) -> Any:
    out = Path(ctx.output_dir or "/output")
    block = b"\0" * (1024 * 1024)
    for i in range(int(ctx.args.get("files", 1000))):
        with (out / f"f{i}").open("wb") as fh:
            for _ in range(int(ctx.args.get("mb_per_file", 10))):
                fh.write(block)
    return {"ok": True}


def case_network(ctx: Context) -> Any:
    interfaces = sorted(name for _, name in socket.if_nameindex())
    attempts = {}
    # 192.0.2.1 is TEST-NET-1 (documentation only); with no interface but loopback, connect()
    # fails locally and nothing leaves the container.
    for host in ("192.0.2.1",):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect((host, 80))
            attempts[host] = "connected"
        except OSError as exc:
            attempts[host] = f"{type(exc).__name__}: {exc.strerror or exc}"
        finally:
            s.close()
    return {"interfaces": interfaces, "attempts": attempts}


def case_whoami(ctx: Context) -> Any:
    status = Path("/proc/self/status").read_text()
    caps = {
        line.split(":")[0]: line.split(":")[1].strip()
        for line in status.splitlines()
        if line.startswith(("Cap", "NoNewPrivs", "Seccomp"))
    }
    writable = {}
    for path in ("/", "/etc", "/opt", "/tmp", "/output"):
        try:
            probe = Path(path) / ".probe"
            probe.write_text("x")
            probe.unlink()
            writable[path] = True
        except OSError:
            writable[path] = False
    return {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "caps": caps,
        "writable": writable,
        "env": dict(os.environ),
        "hostname": socket.gethostname(),
        "pid1": Path("/proc/1/cmdline").read_bytes().replace(b"\0", b" ").decode().strip(),
    }


# --- hostile cases for tests/security ------------------------------------------------------------
# Each reports from inside what happened (an errno name, a count), so a test can assert the
# effect and not only the run's status. Errnos are names ("EPERM") so runc and gVisor compare.


def _errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def attempt(action: Any) -> str:
    """'ok' if ``action()`` succeeded, else the errno name (or the exception type)."""
    try:
        action()
    except OSError as exc:
        return _errname(exc)
    except (ValueError, PermissionError) as exc:
        return type(exc).__name__
    return "ok"


_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.syscall.restype = ctypes.c_long
SYSCALLS = {  # x86_64 numbers
    "personality": 135,
    "pivot_root": 155,
    "chroot": 161,
    "acct": 163,
    "settimeofday": 164,
    "mount": 165,
    "umount2": 166,
    "swapon": 167,
    "reboot": 169,
    "sethostname": 170,
    "iopl": 172,
    "ioperm": 173,
    "init_module": 175,
    "clock_settime": 227,
    "kexec_load": 246,
    "add_key": 248,
    "keyctl": 250,
    "unshare": 272,
    "perf_event_open": 298,
    "open_by_handle_at": 304,
    "setns": 308,
    "finit_module": 313,
    "bpf": 321,
    "userfaultfd": 323,
}


def syscall(name: str, *args: Any) -> str:
    """Call a raw syscall; 'ok' or the errno name."""
    ctypes.set_errno(0)
    ret = _LIBC.syscall(ctypes.c_long(SYSCALLS[name]), *args)
    if ret == -1:
        return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
    return "ok"


def read_probe(path: str) -> str:
    """'empty' (masked with /dev/null), 'read N bytes', or the errno name."""
    try:
        with Path(path).open("rb") as fh:
            data = fh.read(4096)
    except OSError as exc:
        return _errname(exc)
    return f"read {len(data)} bytes" if data else "empty"


def case_threadbomb(ctx: Context) -> Any:
    stop = threading.Event()
    started = 0
    error = None
    try:
        while started < 100000:
            t = threading.Thread(target=stop.wait, daemon=True)
            t.start()
            started += 1
    except RuntimeError as exc:  # "can't start new thread"
        error = str(exc)
    stop.set()
    return {"threads": started, "error": error}


def case_tmpfs_fill(ctx: Context) -> Any:
    # Many 1 MiB files, so the tmpfs size (not RLIMIT_FSIZE on one file) is what stops us.
    written = 0
    block = b"\1" * (1024 * 1024)
    error = None
    try:
        for i in range(100000):
            with Path(f"/tmp/fill{i}").open("wb") as fh:  # noqa: S108 - the container's tmpfs
                fh.write(block)
            written += len(block)
    except OSError as exc:
        error = _errname(exc)
    return {"written_mb": written // (1024 * 1024), "error": error}


def case_fsize(ctx: Context) -> Any:
    # One file larger than RLIMIT_FSIZE; Python ignores SIGXFSZ, so write() fails with EFBIG.
    target = Path(ctx.args.get("message") or "/tmp/huge")  # noqa: S108 - inside the container
    written = 0
    error = None
    block = b"\2" * (1024 * 1024)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(int(ctx.args.get("mb", 1000))):
            written += os.write(fd, block)
    except OSError as exc:
        error = _errname(exc)
    finally:
        os.close(fd)
    return {
        "written_bytes": written,
        "size": target.stat().st_size,
        "error": error,
        "limit": resource.getrlimit(resource.RLIMIT_FSIZE),
    }


def case_inodes(ctx: Context) -> Any:
    root = Path(ctx.output_dir or "/tmp")  # noqa: S108 - inside the container
    made = 0
    error = None
    try:
        for i in range(int(ctx.args.get("count", 1000000))):
            (root / f"i{i}").touch()
            made += 1
    except OSError as exc:
        error = _errname(exc)
    return {"made": made, "error": error}


def case_fds(ctx: Context) -> Any:
    opened = []
    error = None
    try:
        while len(opened) < 1000000:
            opened.append(os.open("/dev/null", os.O_RDONLY))
    except OSError as exc:
        error = _errname(exc)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {"opened": len(opened), "error": error, "nofile": [soft, hard]}


def case_spin(ctx: Context) -> Any:
    ctx.progress("spinning")
    x = 0
    while True:
        x += 1


def case_rootfs_write(ctx: Context) -> Any:
    targets = ["/probe", "/etc/probe", "/usr/bin/probe", "/opt/testkit/main.py", "/var/probe"]
    outcome = {t: attempt(lambda t=t: Path(t).write_text("x")) for t in targets}
    outcome["/etc/passwd (append)"] = attempt(lambda: Path("/etc/passwd").open("a").close())
    outcome["chmod /opt/testkit/main.py"] = attempt(lambda: os.chmod("/opt/testkit/main.py", 0o777))
    return outcome


def case_exec_tmp(ctx: Context) -> Any:
    results = {}
    for directory in ("/tmp", "/dev/shm"):  # noqa: S108 - inside the container
        copy = Path(directory) / "mytrue"
        try:
            shutil.copy("/bin/true", copy)
            copy.chmod(0o755)
        except OSError as exc:
            results[directory] = f"copy: {_errname(exc)}"
            continue
        results[directory] = attempt(
            lambda c=copy: subprocess.run([str(c)], check=True)  # noqa: S603 - test binary
        )
    return results


def case_setuid_probe(ctx: Context) -> Any:
    found = []
    for top in ("/bin", "/sbin", "/usr", "/opt", "/etc", "/lib"):
        for dirpath, _dirs, files in os.walk(top):
            for name in files:
                full = os.path.join(dirpath, name)  # noqa: PTH118 - os.walk strings
                try:
                    mode = os.lstat(full).st_mode
                except OSError:
                    continue
                if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
                    found.append(full)
    pr_get_no_new_privs = 39
    nnp = str(_LIBC.prctl(pr_get_no_new_privs, 0, 0, 0, 0))  # gVisor's status lacks the line
    mine = Path("/tmp/suid")  # noqa: S108 - inside the container
    mine.write_text("x")
    return {
        "setuid_files": found,
        "no_new_privs": nnp,
        "chmod_setuid_in_tmp": attempt(lambda: mine.chmod(0o4755)),
        "setuid0": attempt(lambda: os.setuid(0)),
        "setgid0": attempt(lambda: os.setgid(0)),
        "setgroups": attempt(lambda: os.setgroups([0])),
        "euid": os.geteuid(),
    }


def case_proc_probe(ctx: Context) -> Any:
    reads = {}
    for path in (
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/sched_debug",
        "/proc/sysrq-trigger",
        "/proc/kallsyms",
        "/proc/1/mem",
    ):
        reads[path] = read_probe(path)
    writes = {}
    for path, value in (
        ("/proc/sysrq-trigger", "h"),
        ("/proc/sys/kernel/hostname", "pwned"),
        ("/proc/sys/kernel/core_pattern", "|/tmp/x"),
        ("/proc/sys/vm/drop_caches", "3"),
        ("/proc/self/oom_score_adj", "-1000"),
        ("/proc/self/attr/current", "unconfined"),
    ):
        writes[path] = attempt(lambda p=path, v=value: Path(p).write_text(v))
    kallsyms_zeroed = None
    try:
        first = Path("/proc/kallsyms").read_text().split("\n", 1)[0]
        kallsyms_zeroed = first.startswith("0000000000000000")
    except OSError:
        kallsyms_zeroed = True
    return {"reads": reads, "writes": writes, "kallsyms_addresses_hidden": kallsyms_zeroed}


def case_sys_probe(ctx: Context) -> Any:
    writes = {}
    for path, value in (
        ("/sys/kernel/uevent_helper", "/tmp/x"),
        ("/sys/kernel/mm/transparent_hugepage/enabled", "never"),
        ("/sys/class/net/lo/mtu", "1"),
        ("/sys/power/state", "mem"),
        ("/sys/module/probe", "x"),
    ):
        writes[path] = attempt(lambda p=path, v=value: Path(p).write_text(v))
    try:
        firmware = f"{len(os.listdir('/sys/firmware'))} entries"
    except OSError as exc:
        firmware = _errname(exc)
    return {"writes": writes, "firmware_listing": firmware}


def case_cgroup_escape(ctx: Context) -> Any:
    agents = []
    for dirpath, _dirs, files in os.walk("/sys/fs/cgroup"):
        agents += [os.path.join(dirpath, f) for f in files if f == "release_agent"]  # noqa: PTH118
    writes = {a: attempt(lambda a=a: Path(a).write_text("/tmp/x")) for a in agents}
    notify = {}
    for dirpath, _dirs, files in os.walk("/sys/fs/cgroup"):
        if "notify_on_release" in files:
            target = os.path.join(dirpath, "notify_on_release")  # noqa: PTH118
            notify[target] = attempt(lambda t=target: Path(t).write_text("1"))
            break
    mkdir = attempt(lambda: Path("/sys/fs/cgroup/memory/escape").mkdir())
    mount = syscall(
        "mount", b"cgroup", b"/tmp", b"cgroup", ctypes.c_ulong(0), ctypes.c_char_p(b"rdma")
    )
    limit_raise = attempt(
        lambda: Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").write_text("-1")
    )
    return {
        "release_agents": writes,
        "notify_on_release": notify,
        "mkdir_child_cgroup": mkdir,
        "mount_cgroup": mount,
        "raise_memory_limit": limit_raise,
    }


CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWPID = 0x20000, 0x10000000, 0x40000000, 0x20000000


def case_namespaces(ctx: Context) -> Any:
    results = {
        f"unshare_{name}": syscall("unshare", ctypes.c_int(flag))
        for name, flag in (
            ("user", CLONE_NEWUSER),
            ("mnt", CLONE_NEWNS),
            ("net", CLONE_NEWNET),
            ("pid", CLONE_NEWPID),
        )
    }
    for ns in ("mnt", "net", "pid", "user"):
        try:
            fd = os.open(f"/proc/1/ns/{ns}", os.O_RDONLY)
        except OSError as exc:
            results[f"setns_{ns}"] = f"open: {_errname(exc)}"
            continue
        try:
            results[f"setns_{ns}"] = syscall("setns", ctypes.c_int(fd), ctypes.c_int(0))
        finally:
            os.close(fd)
    results["mount_tmpfs"] = syscall(
        "mount", b"none", b"/tmp", b"tmpfs", ctypes.c_ulong(0), ctypes.c_char_p(None)
    )
    results["remount_root_rw"] = syscall(
        "mount", b"none", b"/", ctypes.c_char_p(None), ctypes.c_ulong(32 | 4096), None
    )  # MS_REMOUNT | MS_BIND
    results["umount_proc"] = syscall("umount2", b"/proc", ctypes.c_int(2))  # MNT_DETACH
    return results


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]  # noqa: RUF012


def case_clock(ctx: Context) -> Any:
    before = time.time()
    when = _Timespec(int(before) + 86400 * 365, 0)
    set_realtime = syscall("clock_settime", ctypes.c_int(0), ctypes.byref(when))
    set_tod = syscall("settimeofday", ctypes.byref(when), None)
    adj = attempt(lambda: time.clock_settime(time.CLOCK_REALTIME, before + 3600))
    return {
        "clock_settime": set_realtime,
        "settimeofday": set_tod,
        "time.clock_settime": adj,
        "clock_moved": abs(time.time() - before) > 60,
    }


def case_ulimits(ctx: Context) -> Any:
    results = {}
    for name in ("RLIMIT_NOFILE", "RLIMIT_FSIZE", "RLIMIT_CORE", "RLIMIT_NPROC", "RLIMIT_AS"):
        which = getattr(resource, name)
        soft, hard = resource.getrlimit(which)
        higher = resource.RLIM_INFINITY if hard != resource.RLIM_INFINITY else hard
        if hard == resource.RLIM_INFINITY:
            results[name] = {"hard": "unlimited", "raise": "already unlimited"}
            continue
        results[name] = {
            "hard": hard,
            "raise": attempt(lambda w=which, s=soft, h=higher: resource.setrlimit(w, (s, h))),
        }
        results[name]["hard_after"] = resource.getrlimit(which)[1]
    return results


def case_keyctl(ctx: Context) -> Any:
    keyctl_join = 1  # KEYCTL_JOIN_SESSION_KEYRING
    keyring = -3  # KEY_SPEC_SESSION_KEYRING
    return {
        "join_session_keyring": syscall("keyctl", ctypes.c_long(keyctl_join), b"sandbox-probe"),
        "add_key": syscall(
            "add_key",
            b"user",
            b"sandbox-probe",
            b"secret",
            ctypes.c_size_t(6),
            ctypes.c_int(keyring),
        ),
        "proc_keys": read_probe("/proc/keys"),
    }


def case_sockets(ctx: Context) -> Any:
    def make(family: int, kind: int, proto: int = 0) -> Any:
        return lambda: socket.socket(family, kind, proto).close()

    af_vsock = 40
    af_packet = 17
    return {
        "AF_VSOCK": attempt(make(af_vsock, socket.SOCK_STREAM)),
        "AF_INET raw ICMP": attempt(make(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),
        "AF_INET raw TCP": attempt(make(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)),
        "AF_INET6 raw": attempt(make(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)),
        "AF_PACKET raw": attempt(make(af_packet, socket.SOCK_RAW, 0x0300)),
    }


def case_egress(ctx: Context) -> Any:
    # TEST-NET addresses only; with no interface but lo nothing can leave the container.
    results: dict[str, Any] = {"interfaces": sorted(n for _, n in socket.if_nameindex())}

    def tcp(family: int, address: tuple[Any, ...]) -> Any:
        def go() -> None:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(2)
                s.connect(address)

        return go

    def udp() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"x", ("192.0.2.1", 53))

    results["tcp4 192.0.2.1:80"] = attempt(tcp(socket.AF_INET, ("192.0.2.1", 80)))
    results["tcp6 [2001:db8::1]:80"] = attempt(tcp(socket.AF_INET6, ("2001:db8::1", 80, 0, 0)))
    results["udp4 192.0.2.1:53"] = attempt(udp)
    results["dns example.invalid"] = attempt(lambda: socket.getaddrinfo("example.invalid", 80))
    try:
        results["routes"] = Path("/proc/net/route").read_text().splitlines()[1:]
    except OSError as exc:
        results["routes"] = _errname(exc)
    return results


def case_syscalls(ctx: Context) -> Any:
    null = ctypes.c_void_p(None)
    zero = ctypes.c_long(0)
    return {
        "bpf": syscall("bpf", ctypes.c_int(0), null, ctypes.c_uint(0)),
        "perf_event_open": syscall("perf_event_open", null, zero, ctypes.c_int(-1), zero, zero),
        "init_module": syscall("init_module", null, zero, b""),
        "finit_module": syscall("finit_module", ctypes.c_int(0), b"", ctypes.c_int(0)),
        "kexec_load": syscall("kexec_load", zero, zero, null, zero),
        "reboot": syscall("reboot", ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0), null),
        "swapon": syscall("swapon", b"/tmp/swap", ctypes.c_int(0)),
        "pivot_root": syscall("pivot_root", b"/tmp", b"/tmp"),
        "chroot": syscall("chroot", b"/tmp"),
        "sethostname": syscall("sethostname", b"pwned", ctypes.c_size_t(5)),
        "open_by_handle_at": syscall("open_by_handle_at", ctypes.c_int(-100), null, zero),
        "iopl": syscall("iopl", ctypes.c_int(3)),
        "ioperm": syscall("ioperm", zero, ctypes.c_long(1024), ctypes.c_int(1)),
        "acct": syscall("acct", b"/tmp/acct"),
        "personality_read_implies_exec": syscall("personality", ctypes.c_ulong(0x0400000)),
    }


def case_devices(ctx: Context) -> Any:
    listing = sorted(os.listdir("/dev"))
    opens = {
        d: attempt(lambda d=d: os.close(os.open(d, os.O_RDONLY)))
        for d in ("/dev/mem", "/dev/kmem", "/dev/kmsg", "/dev/port", "/dev/sda", "/dev/vda")
    }
    mknod_char = attempt(lambda: os.mknod("/tmp/mem", 0o600 | stat.S_IFCHR, os.makedev(1, 1)))
    mknod_block = attempt(lambda: os.mknod("/tmp/disk", 0o600 | stat.S_IFBLK, os.makedev(8, 0)))
    # gVisor lets mknod make a node in its own tmpfs; what matters is that it opens nothing.
    if mknod_char == "ok":
        mknod_char = "made; open: " + read_probe("/tmp/mem")
    if mknod_block == "ok":
        mknod_block = "made; open: " + read_probe("/tmp/disk")
    return {"dev": listing, "open": opens, "mknod_char": mknod_char, "mknod_block": mknod_block}


def case_docker_socket(ctx: Context) -> Any:
    found = []
    for top in ("/run", "/var/run", "/tmp", "/inputs", "/output", "/"):
        if not Path(top).is_dir():
            continue
        depth0 = top.count("/")
        for dirpath, dirs, files in os.walk(top):
            if dirpath.startswith(("/proc", "/sys")) or dirpath.count("/") - depth0 > 3:
                dirs[:] = []
                continue
            for name in files + dirs:
                full = os.path.join(dirpath, name)  # noqa: PTH118 - os.walk strings
                try:
                    if stat.S_ISSOCK(os.lstat(full).st_mode):
                        found.append(full)
                except OSError:
                    continue

    def connect(path: str) -> Any:
        def go() -> None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(path)

        return go

    return {
        "sockets": sorted(set(found)),
        "docker.sock": attempt(connect("/var/run/docker.sock")),
        "containerd.sock": attempt(connect("/run/containerd/containerd.sock")),
    }


def case_env_harvest(ctx: Context) -> Any:
    environ = {}
    for pid in sorted(p for p in os.listdir("/proc") if p.isdigit()):
        try:
            raw = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError as exc:
            environ[pid] = _errname(exc)
            continue
        environ[pid] = sorted(item.split(b"=", 1)[0].decode() for item in raw.split(b"\0") if item)
    return {
        "env": dict(os.environ),
        "proc_environ_keys": environ,
        "cmdline1": Path("/proc/1/cmdline").read_bytes().decode(errors="replace"),
    }


def case_daemonize(ctx: Context) -> Any:
    # Double fork + setsid: the grandchild is re-parented to the container's init and becomes a
    # long sleeper with a marker in its argv that the host can look for afterwards.
    marker = str(ctx.args.get("message", "987.654"))
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        devnull = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.execv("/bin/sleep", ["sleep", marker])  # noqa: S606 - fixed binary
    os.waitpid(pid, 0)
    time.sleep(0.3)
    sleepers = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"sleep\0"):
                sleepers.append(int(p))
    return {"daemon_running": bool(sleepers), "marker": marker}


def case_zombies(ctx: Context) -> Any:
    # Children that exit and are never waited for; after we exit the container's init reaps them.
    made = 0
    for _ in range(int(ctx.args.get("count", 20))):
        if os.fork() == 0:
            os._exit(0)
        made += 1
    time.sleep(0.3)
    zombies = 0
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            zombies += state == "Z"
    return {"forked": made, "zombies_seen": zombies}


def case_link_tricks(ctx: Context) -> Any:
    out = Path(ctx.output_dir or "/output")
    (out / "ok.txt").write_text("fine\n")
    (out / "root-link").symlink_to("/")
    (out / "up-link").symlink_to("../../../../etc")
    (out / "loop-a").symlink_to("loop-b")
    (out / "loop-b").symlink_to("loop-a")
    (out / "sub").mkdir()
    (out / "sub" / "shadow-link").symlink_to("/etc/shadow")
    os.mkfifo(out / "fifo")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(out / "sock"))
    setuid_file = out / "setuid.sh"
    setuid_file.write_text("#!/bin/sh\nid\n")
    results = {"chmod_setuid": attempt(lambda: setuid_file.chmod(0o6755))}
    tmp_file = Path("/tmp/t")  # noqa: S108 - inside the container
    tmp_file.write_text("tmp")
    results["hardlink_from_tmp"] = attempt(lambda: os.link(tmp_file, out / "tmp-hardlink"))
    inputs = [Path(p) for p in ctx.inputs.values()]
    for inp in inputs:
        target = next((f for f in inp.rglob("*") if f.is_file()), inp) if inp.is_dir() else inp
        results["hardlink_from_input"] = attempt(lambda t=target: os.link(t, out / "input-link"))
        results["write_input"] = attempt(lambda t=target: t.write_text("pwned"))
    results["mknod"] = attempt(
        lambda: os.mknod(out / "dev", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    )
    results["newline name"] = attempt(lambda: (out / "evil\nname.txt").write_text("x"))
    return results


def case_hostile_frames(args: dict[str, Any]) -> None:
    raw_write(b'{"type":"accepted","tool":"other","image":"x","image_id":"x"}\n')
    raw_write(b'{"type":"started","container_id":"forged"}\n')
    raw_write(b'{"v":2,"run_id":"forged","seq":-1,"ts":"x","type":"data","payload":1}\n')
    raw_write(b'{"type":"data","payload":Infinity}\n')
    raw_write(b'{"type":"data","payload":-Infinity}\n')
    raw_write(b'{"type":"data","payload":1e999}\n')
    raw_write(b'{"type":"data","payload":' + b'{"a":' * 200 + b"1" + b"}" * 200 + b"}\n")
    raw_write(b'{"type":"data","payload":' + b"[" * 50000 + b"]" * 50000 + b"}\n")
    raw_write(b'{"type":"progress","message":"x","fraction":NaN}\n')
    raw_write(b'{"type":"log","stream":"stdin","line":"bad stream"}\n')
    raw_write(b'{"type":"data","payload":"\\u0000 nul \\u001b[2J \\u2028 sep"}\n')
    raw_write(b'{"type":"result","payload":{"ok":true}}\n')


def case_ignore_sigterm(ctx: Context) -> Any:
    # Ignores SIGTERM, so only a SIGKILL ends it.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctx.progress("ignoring SIGTERM")
    while True:
        time.sleep(0.05)


def case_arg_digest(ctx: Context) -> Any:
    # How the args arrived, without echoing them (a huge echo would test output, not input).
    import hashlib

    text = json.dumps(ctx.args, sort_keys=True, ensure_ascii=False)
    return {"sha256": hashlib.sha256(text.encode()).hexdigest(), "chars": len(text)}


def main(ctx: Context) -> Any:
    case = ctx.args.get("case", "echo")
    handler = globals().get(f"case_{case}")
    if handler is None:
        msg = f"unknown case {case!r}"
        raise ToolError(msg)
    return handler(ctx)


if __name__ == "__main__":
    request = json.loads(sys.stdin.readline() or "{}")
    case = (request.get("args") or {}).get("case", "echo")
    if case in RAW_CASES:
        globals()[f"case_{case}"](request.get("args") or {})
        sys.exit(0)
    run(main, request)
