"""Escape attempts: each hostile script reports from inside what the kernel (or gVisor) said,
and each answer must be a refusal. Contract section 6, shown by effect rather than by config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IMAGE_ENV

from .conftest import SecurityEnv, assert_exit, assert_host_invariants

pytestmark = pytest.mark.docker

REFUSED = {"EPERM", "EACCES", "EROFS", "ENOENT", "ENOSYS", "EINVAL", "EIO", "ValueError"}
# What a read of a masked or hidden /proc or /sys file may give: nothing useful.
HIDDEN = {"ENOENT", "EACCES", "EPERM", "EIO", "empty"}


def probe(env: SecurityEnv, case: str) -> Any:
    result = env.result(case)
    assert_exit(result, "ok", 0)
    assert_host_invariants(env, result)
    return result.result


def test_identity_is_unprivileged_and_the_root_fs_read_only(security_env: SecurityEnv) -> None:
    info = probe(security_env, "identity")
    assert (info["uid"], info["gid"]) == (65532, 65532)
    caps = info["caps"]
    for key in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        if key in caps:  # gVisor's status lists fewer fields
            assert caps[key] == "0000000000000000", key
    if security_env.runtime == "runc":
        assert caps["NoNewPrivs"] == "1"
        assert caps["Seccomp"] == "2"
    assert info["writable"] == {
        "/": False,
        "/etc": False,
        "/opt": False,
        "/tmp": True,
        "/output": True,
    }
    assert "docker-init" in info["pid1"]
    assert info["hostname"] == "sandbox"


def test_root_filesystem_writes_fail(security_env: SecurityEnv) -> None:
    outcome = probe(security_env, "rootfs_write")
    assert set(outcome.values()) <= {"EROFS", "EACCES", "EPERM"}, outcome


def test_exec_from_tmp_and_dev_shm_is_refused(security_env: SecurityEnv) -> None:
    outcome = probe(security_env, "exec_from_tmp")
    assert outcome == {"/tmp": "EACCES", "/dev/shm": "EACCES"}


def test_no_setuid_binaries_and_no_way_to_uid_0(security_env: SecurityEnv) -> None:
    outcome = probe(security_env, "setuid")
    assert outcome["setuid_files"] == []
    assert outcome["no_new_privs"] == "1"
    assert outcome["euid"] == 65532
    for key in ("setuid0", "setgid0", "setgroups"):
        assert outcome[key] == "EPERM", key


def test_proc_secrets_hidden_and_proc_writes_refused(security_env: SecurityEnv) -> None:
    outcome = probe(security_env, "proc_probe")
    for path, got in outcome["reads"].items():
        if path == "/proc/kallsyms":
            continue  # readable on runc, but with every address zeroed (checked below)
        assert got in HIDDEN, (path, got)
    assert outcome["kallsyms_addresses_hidden"] is True
    for path, got in outcome["writes"].items():
        if path == "/proc/self/oom_score_adj" and security_env.runtime == "runsc":
            continue  # gVisor keeps its own, virtual value; the host's score is untouched
        assert got in REFUSED, (path, got)


def test_sys_writes_refused_and_firmware_masked(security_env: SecurityEnv) -> None:
    outcome = probe(security_env, "sys_probe")
    assert set(outcome["writes"].values()) <= REFUSED, outcome
    assert outcome["firmware_listing"] in ("0 entries", "ENOENT", "EACCES")


def test_cgroup_release_agent_and_cgroup_mounts_are_out_of_reach(
    security_env: SecurityEnv,
) -> None:
    outcome = probe(security_env, "cgroup_release_agent")
    # Private cgroup namespace: no release_agent is even visible; all writes refused.
    assert all(v in REFUSED for v in outcome["release_agents"].values()), outcome
    assert all(v in REFUSED for v in outcome["notify_on_release"].values()), outcome
    assert outcome["mkdir_child_cgroup"] in REFUSED
    assert outcome["mount_cgroup"] == "EPERM"
    assert outcome["raise_memory_limit"] in REFUSED


def test_unshare_setns_and_mount_are_refused(security_env: SecurityEnv) -> None:
    outcome = probe(security_env, "namespaces")
    assert all(v == "EPERM" or v.startswith("open: ") for v in outcome.values()), outcome


def test_the_clock_cannot_be_set(security_env: SecurityEnv) -> None:
    outcome = probe(security_env, "clock")
    assert outcome["clock_settime"] == "EPERM"
    assert outcome["settimeofday"] == "EPERM"
    assert outcome["time.clock_settime"] == "EPERM"
    assert outcome["clock_moved"] is False


def test_hard_ulimits_cannot_be_raised(security_env: SecurityEnv) -> None:
    outcome = probe(security_env, "ulimits")
    for name, limit in outcome.items():
        if limit["hard"] == "unlimited":
            continue
        assert limit["raise"] in ("ValueError", "EPERM"), name
        assert limit["hard_after"] == limit["hard"], name
    assert outcome["RLIMIT_NOFILE"]["hard"] == 4096
    assert outcome["RLIMIT_CORE"]["hard"] == 0


def test_kernel_keyring_is_out_of_reach(security_env: SecurityEnv) -> None:
    outcome = probe(security_env, "keyctl")
    assert outcome["join_session_keyring"] in ("EPERM", "ENOSYS")
    assert outcome["add_key"] in ("EPERM", "ENOSYS")
    assert outcome["proc_keys"] in HIDDEN


def test_raw_and_packet_sockets_are_refused(security_env: SecurityEnv) -> None:
    outcome = probe(security_env, "sockets")
    for family in ("AF_INET raw ICMP", "AF_INET raw TCP", "AF_INET6 raw", "AF_PACKET raw"):
        assert outcome[family] in ("EPERM", "EAFNOSUPPORT", "EACCES"), family


def test_vsock_socket_is_refused(security_env: SecurityEnv) -> None:
    # Debian's Docker 20.10.24 default seccomp profile lacks the AF_VSOCK rule (moby#44562), so
    # on a VM with a vsock device a runc container could open a socket towards the hypervisor;
    # the launcher's stacked seccomp filter (sandbox_launch.py) refuses it under both runtimes.
    outcome = probe(security_env, "sockets")
    assert outcome["AF_VSOCK"] in ("EPERM", "EAFNOSUPPORT")


def test_no_network_egress_only_loopback(security_env: SecurityEnv) -> None:
    outcome = probe(security_env, "egress")
    assert outcome["interfaces"] == ["lo"]
    assert outcome["routes"] == []
    unreachable = {"ENETUNREACH", "EHOSTUNREACH"}
    assert outcome["tcp4 192.0.2.1:80"] in unreachable
    assert outcome["tcp6 [2001:db8::1]:80"] in unreachable | {"EADDRNOTAVAIL", "EAFNOSUPPORT"}
    assert outcome["udp4 192.0.2.1:53"] in unreachable
    assert outcome["dns example.invalid"] != "ok"


def test_dangerous_syscalls_are_refused(security_env: SecurityEnv) -> None:
    outcome = probe(security_env, "kernel_syscalls")
    assert set(outcome.values()) <= {"EPERM", "ENOSYS"}, outcome


def test_no_host_devices_and_mknod_gives_nothing(security_env: SecurityEnv) -> None:
    outcome = probe(security_env, "devices")
    assert set(outcome["open"].values()) <= {"ENOENT", "EACCES", "EPERM"}
    harmless = {"fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin"}
    harmless |= {"stdout", "tty", "urandom", "zero", "mqueue", "fuse", "net"}
    assert set(outcome["dev"]) <= harmless, outcome["dev"]
    for key in ("mknod_char", "mknod_block"):
        # runc: refused. gVisor: the node is made in its own tmpfs but opens nothing.
        assert outcome[key] in ("EPERM", "made; open: ENXIO", "made; open: EACCES"), key


def test_no_docker_or_containerd_socket_inside(security_env: SecurityEnv) -> None:
    outcome = probe(security_env, "docker_socket")
    assert outcome["sockets"] == []
    assert outcome["docker.sock"] == "ENOENT"
    assert outcome["containerd.sock"] == "ENOENT"


def test_environment_harvest_finds_no_host_variable(security_env: SecurityEnv) -> None:
    outcome = probe(security_env, "environment_harvest")
    assert set(outcome["env"]) <= IMAGE_ENV
    for keys in outcome["proc_environ_keys"].values():
        assert isinstance(keys, str) or set(keys) <= IMAGE_ENV
    text = repr(outcome)
    for leaked in ("SECRET_TOKEN", "AWS_SECRET_ACCESS_KEY", "HTTP_PROXY", "127.0.0.1:9"):
        assert leaked not in text


def _host_processes_with(argv: list[bytes]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.split(b"\0")[: len(argv)] == argv:
                found.append(int(entry.name))
    return found


def test_daemonized_process_does_not_outlive_the_run(security_env: SecurityEnv) -> None:
    outcome = probe(security_env, "daemonize")
    assert outcome["daemon_running"] is True  # it really was detached inside
    assert _host_processes_with([b"sleep", b"987.654"]) == []


def test_zombies_are_reaped_with_the_container(security_env: SecurityEnv) -> None:
    outcome = probe(security_env, "zombies")
    assert outcome["forked"] == 30


def test_the_stdout_pipe_is_write_only_on_a_read_only_mount(security_env: SecurityEnv) -> None:
    found = probe(security_env, "stdout_pipe")
    if security_env.runtime == "runsc":
        assert found == {"absent": True}  # gVisor cannot mount a named pipe: no pipe at all
        return
    assert found["fifo"] is True
    # Only the coordinator reads the tool's stdout; the tool cannot read it or re-purpose it.
    assert found["read"] == "EACCES"
    assert found["rdwr"] == "EACCES"
    assert found["chmod"] in REFUSED
    assert found["unlink"] in REFUSED | {"EBUSY"}
    assert found["mount"] == ["ro"]
    # Reopened by path, it is still the tool's stdout: what is written arrives as frames.
    assert [f["payload"] for f in security_env.result("stdout_pipe").of_type("data")] == [
        "reopened"
    ]
