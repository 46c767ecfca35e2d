"""Start a tool inside its container: stack a seccomp filter on top of the engine's, then exec.

Usage: ``python3 -I -S sandbox_launch.py [--stdout PIPE] -- CMD ARGS...`` (stdlib only, runs as
the tool's user).

With ``--stdout``, the tool's stdout is the named pipe PIPE, which the coordinator mounted from
the host and reads itself: the bulk of a run's output then skips the engine's stdio relay
(containerd's shim, dockerd and the attach socket, three copies and their wake-ups). The pipe is
opened before anything else, without blocking: the coordinator opened its end before the
container was created, so no reader means the coordinator is gone and the tool must not run.

Seccomp filters stack and the most restrictive answer wins, so this can only take away. It
refuses ``socket(AF_VSOCK, ...)``: older engines' default profile (e.g. Docker 20.10) still allows
vsock, which on a virtual machine is a channel to the hypervisor host that no network namespace
covers (newer engines block it the same way). 32-bit ``socketcall(SYS_SOCKET)`` is refused too,
because the family behind its pointer argument cannot be inspected.

It also answers ``clone3`` with ``ENOSYS``, which is what Docker's default profile means to do
(it cannot inspect clone3's flags, so it refuses the call and libc falls back to ``clone``, whose
flags it checks). gVisor applies that profile with ``EPERM`` instead, and on ``EPERM`` glibc does
not fall back: no thread could start under runsc. Where two filters refuse with an errno, the
newest filter's errno is the one returned (Linux and gVisor alike), so this restores ``ENOSYS``
without allowing anything.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
AF_VSOCK = 40
EAFNOSUPPORT = 97
ENOSYS = 38
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_BIT = 0x40000000
LD_ABS_W = 0x20
JEQ_K = 0x15
RET_K = 0x06
OFF_NR, OFF_ARCH, OFF_ARG0 = 0, 4, 16  # struct seccomp_data, little-endian low word of args[0]

CLONE3 = 435  # the same number on every architecture below
# (arch, syscall numbers whose first argument is the address family, numbers refused outright,
# numbers answered "not implemented")
ARCH_RULES = (
    (AUDIT_ARCH_X86_64, (41, X32_BIT | 41), (), (CLONE3, X32_BIT | CLONE3)),
    (AUDIT_ARCH_I386, (359,), (102,), (CLONE3,)),
    (AUDIT_ARCH_AARCH64, (198,), (), (CLONE3,)),
)


def _program() -> list[tuple[int, int, int, int]]:
    """BPF as (code, jt, jf, k); jumps are filled in from labels."""
    code: list[tuple[int, str | int, str | int, int]] = [(LD_ABS_W, 0, 0, OFF_ARCH)]
    for index, (arch, _, _, _) in enumerate(ARCH_RULES):
        code.append((JEQ_K, f"arch{index}", 0, arch))
    code.append((RET_K, 0, 0, RET_ALLOW))
    labels: dict[str, int] = {}
    for index, (_, family_calls, refused, unimplemented) in enumerate(ARCH_RULES):
        labels[f"arch{index}"] = len(code)
        code.append((LD_ABS_W, 0, 0, OFF_NR))
        for nr in family_calls:
            code.append((JEQ_K, "family", 0, nr))
        for nr in refused:
            code.append((JEQ_K, "deny", 0, nr))
        for nr in unimplemented:
            code.append((JEQ_K, "enosys", 0, nr))
        code.append((RET_K, 0, 0, RET_ALLOW))
    labels["family"] = len(code)
    code.append((LD_ABS_W, 0, 0, OFF_ARG0))
    code.append((JEQ_K, "deny", 0, AF_VSOCK))
    code.append((RET_K, 0, 0, RET_ALLOW))
    labels["deny"] = len(code)
    code.append((RET_K, 0, 0, RET_ERRNO | EAFNOSUPPORT))
    labels["enosys"] = len(code)
    code.append((RET_K, 0, 0, RET_ERRNO | ENOSYS))

    def target(at: int, jump: str | int) -> int:
        return labels[jump] - at - 1 if isinstance(jump, str) else jump

    return [(c, target(i, jt), target(i, jf), k) for i, (c, jt, jf, k) in enumerate(code)]


def install_filter() -> None:
    program = _program()
    raw = b"".join(struct.pack("HBBI", c, jt, jf, k) for c, jt, jf, k in program)
    buffer = ctypes.create_string_buffer(raw, len(raw))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(program), ctypes.cast(buffer, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [
        ctypes.c_int,
        ctypes.c_ulong,
        ctypes.c_void_p,
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


USAGE = "usage: sandbox_launch.py [--stdout PIPE] -- COMMAND [ARGS...]\n"


def redirect_stdout(pipe: str) -> None:
    """Make ``pipe`` this process's stdout (inherited by the tool through exec)."""
    fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    # Opened without blocking only so that a missing reader fails at once (ENXIO); the tool
    # gets an ordinary blocking stdout.
    os.set_blocking(fd, True)
    os.dup2(fd, 1)  # dup2's copy is inheritable
    os.close(fd)


def main(argv: list[str]) -> None:
    pipe = None
    if len(argv) >= 2 and argv[0] == "--stdout":
        pipe, argv = argv[1], argv[2:]
    if len(argv) < 2 or argv[0] != "--":
        sys.stderr.write(USAGE)
        sys.exit(2)
    if pipe is not None:
        try:
            redirect_stdout(pipe)
        except OSError as exc:
            sys.stderr.write(f"sandbox_launch: cannot open the stdout pipe {pipe}: {exc}\n")
            sys.exit(126)
    try:
        install_filter()
    except OSError as exc:
        # Fail closed: a tool never runs with less isolation than it was promised.
        sys.stderr.write(f"sandbox_launch: cannot install the seccomp filter: {exc}\n")
        sys.exit(126)
    os.execvp(argv[1], argv[1:])  # noqa: S606 - exec the fixed policy command, no shell


if __name__ == "__main__":
    main(sys.argv[1:])
