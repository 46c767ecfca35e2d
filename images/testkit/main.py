"""Test cases for the coordinator, chosen by ``args.case``. Some speak protocol v1 through the
runtime module; the hostile ones write raw bytes to fd 1 or misbehave on purpose.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from sandbox_runtime import Context, ToolError, run

# Hostile cases do not use the runtime: they write raw bytes to the real stdout (fd 1).
RAW_CASES = {"flood", "giant_line", "invalid_utf8", "forge_exit", "raw_prints"}


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
