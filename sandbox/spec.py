"""Policy + request -> one frozen ``ContainerSpec`` -> the docker SDK ``containers.create`` kwargs.

Pure: no I/O, no docker import (mounts, ulimits and log config are the plain dicts the SDK
accepts). Every hardening item of contract section 6 is set here, and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .policy import Policy

LABEL_PREFIX = "io.sandbox"
LABEL_MANAGED = f"{LABEL_PREFIX}.managed"
LABEL_RUN_ID = f"{LABEL_PREFIX}.run_id"
LABEL_TOOL = f"{LABEL_PREFIX}.tool"
LABEL_OWNER_PID = f"{LABEL_PREFIX}.owner_pid"
LABEL_OWNER_START = f"{LABEL_PREFIX}.owner_start"
LABEL_OWNER_HOST = f"{LABEL_PREFIX}.owner_host"
LABEL_DEADLINE = f"{LABEL_PREFIX}.deadline"
LABEL_POLICY_SHA = f"{LABEL_PREFIX}.policy_sha256"
# Set on warm-pool containers, so every server on the engine can count the idle ones.
LABEL_POOL = f"{LABEL_PREFIX}.pool"
# Set on an image whose launcher takes ``--stdout PIPE`` (images/base/Dockerfile).
LABEL_STDOUT_PIPE = f"{LABEL_PREFIX}.stdout-pipe"

INPUTS_DIR = "/inputs"
OUTPUT_DIR = "/output"
# Where a run's stdout pipe is mounted (read-only: a named pipe stays writable on a read-only
# mount, nothing else about it is).
STDOUT_PIPE_TARGET = "/run/sandbox/stdout"
MIB = 1024 * 1024
# gVisor's own threads count against the pids limit (engine notes: 7 of 10 runs failed with
# only one process of headroom), so runs under runsc get this many more.
RUNSC_PIDS_HEADROOM = 192
# docker-init and the in-container `timeout` wrapper are ours, not the tool's.
WRAPPER_PIDS = 2
# The in-container deadline fires this long after the coordinator's, so a live coordinator
# always reports the timeout itself; a dead one still gets its container ended.
IN_CONTAINER_GRACE_S = 5
NOFILE = 4096
SHM_MB = 16
FRAME_OVERHEAD_BYTES = 512


@dataclass(frozen=True)
class Owner:
    """The coordinator process that owns a container (for reaping)."""

    pid: int
    start_time: float
    host: str


@dataclass(frozen=True)
class BindMount:
    source: str
    target: str
    read_only: bool


@dataclass(frozen=True)
class ContainerSpec:
    """Everything the engine is told about one run's container."""

    name: str
    image_id: str
    command: tuple[str, ...]
    user: str
    env: tuple[tuple[str, str], ...]
    labels: tuple[tuple[str, str], ...]
    mounts: tuple[BindMount, ...]
    network: str
    runtime: str
    memory_bytes: int
    nano_cpus: int
    pids_limit: int
    tmpfs_bytes: int
    fsize_bytes: int
    timeout_s: float
    frame_max_bytes: int
    stream_cap_bytes: int
    hostname: str = "sandbox"
    # The host path of the named pipe the tool's stdout goes to, or None: the attach socket.
    stdout_pipe: str | None = None

    def create_kwargs(self) -> dict[str, Any]:
        """The exact keyword arguments for ``docker.client.containers.create``."""
        return {
            "image": self.image_id,
            "command": list(self.command),
            "name": self.name,
            "hostname": self.hostname,
            "user": self.user,
            "environment": dict(self.env),
            "labels": dict(self.labels),
            "tty": False,
            "stdin_open": True,
            "network_mode": self.network,
            "network_disabled": self.network == "none",
            "read_only": True,
            "tmpfs": {
                "/tmp":  # noqa: S108 - the container's own /tmp, a private tmpfs
                f"rw,noexec,nosuid,nodev,size={self.tmpfs_bytes},mode=1777"
            },
            "mounts": [
                {"Type": "bind", "Source": m.source, "Target": m.target, "ReadOnly": m.read_only}
                for m in self.mounts
            ],
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "privileged": False,
            "init": True,
            "ipc_mode": "private",
            "shm_size": SHM_MB * MIB,
            "cgroupns": "private",
            "mem_limit": self.memory_bytes,
            "memswap_limit": self.memory_bytes,
            "mem_swappiness": 0,
            "oom_score_adj": 500,
            "nano_cpus": self.nano_cpus,
            "pids_limit": self.pids_limit,
            "ulimits": [
                {"name": "core", "soft": 0, "hard": 0},
                {"name": "nofile", "soft": NOFILE, "hard": NOFILE},
                {"name": "fsize", "soft": self.fsize_bytes, "hard": self.fsize_bytes},
            ],
            "log_config": {"type": "none", "config": {}},
            "runtime": self.runtime,
            "use_config_proxy": False,
            "auto_remove": False,
        }

    def engine_body(self) -> dict[str, Any]:
        """The JSON body of the Engine API's ``POST /containers/create`` (the name goes in the
        query string): ``create_kwargs()`` renamed field for field as the docker SDK does, so
        the hardening has one source; a unit test holds the two equal."""
        return engine_body(self.create_kwargs())


def container_name(run_id: str) -> str:
    return f"sandbox-{run_id}"


LAUNCHER = ("python3", "-I", "-S", "/opt/sandbox/lib/sandbox_launch.py", "--")


def wrapped_command(
    command: list[str], timeout_s: float, *, stdout_pipe: bool = False
) -> tuple[str, ...]:
    """The policy's command under the launcher (a stacked seccomp filter refusing AF_VSOCK,
    which older engines' default profile allows; the stdout pipe, if any) and an in-container
    deadline that holds even if the coordinator is killed. Both exec, so they cost no extra
    process."""
    seconds = int(timeout_s + 0.999) + IN_CONTAINER_GRACE_S
    options = ("--stdout", STDOUT_PIPE_TARGET) if stdout_pipe else ()
    deadline = ("timeout", "-s", "KILL", f"{seconds}s")
    return (*LAUNCHER[:-1], *options, LAUNCHER[-1], *deadline, *command)


def owner_labels(owner: Owner) -> dict[str, str]:
    """The labels naming a container's owning coordinator (what the reaper reads)."""
    return {
        LABEL_OWNER_PID: str(owner.pid),
        LABEL_OWNER_START: f"{owner.start_time:.3f}",
        LABEL_OWNER_HOST: owner.host,
    }


def build_spec(
    policy: Policy,
    *,
    run_id: str,
    policy_sha256: str,
    inputs: dict[str, str],
    staging_dir: str | None,
    timeout_s: float,
    owner: Owner,
    deadline: float,
    stdout_pipe: str | None = None,
) -> ContainerSpec:
    """The container for one authorized run. ``inputs`` maps names to resolved real host paths;
    ``stdout_pipe`` is the host path of a named pipe for the tool's stdout."""
    limits = policy.limits
    mounts = [
        BindMount(source=path, target=f"{INPUTS_DIR}/{name}", read_only=True)
        for name, path in sorted(inputs.items())
    ]
    if staging_dir is not None:
        mounts.append(BindMount(source=staging_dir, target=OUTPUT_DIR, read_only=False))
    if stdout_pipe is not None:
        mounts.append(BindMount(source=stdout_pipe, target=STDOUT_PIPE_TARGET, read_only=True))
    pids = limits.pids + WRAPPER_PIDS
    if policy.runtime == "runsc":
        pids += RUNSC_PIDS_HEADROOM
    frame_max = limits.frame_kb * 1024
    env = dict(policy.env)
    # The in-image runtime keeps its frames under the line limit, leaving room for our envelope.
    env["SANDBOX_MAX_FRAME_BYTES"] = str(frame_max - FRAME_OVERHEAD_BYTES)
    labels = {
        LABEL_MANAGED: "1",
        LABEL_RUN_ID: run_id,
        LABEL_TOOL: policy.tool,
        **owner_labels(owner),
        LABEL_DEADLINE: f"{deadline:.3f}",
        LABEL_POLICY_SHA: policy_sha256,
    }
    return ContainerSpec(
        name=container_name(run_id),
        image_id=policy.image.id,
        command=wrapped_command(policy.command, timeout_s, stdout_pipe=stdout_pipe is not None),
        user=policy.user,
        env=tuple(sorted(env.items())),
        labels=tuple(sorted(labels.items())),
        mounts=tuple(mounts),
        network=policy.network,
        runtime=policy.runtime,
        memory_bytes=limits.memory_mb * MIB,
        nano_cpus=int(limits.cpus * 1e9),
        pids_limit=pids,
        tmpfs_bytes=limits.tmpfs_mb * MIB,
        fsize_bytes=policy.output.max_mb * MIB,
        timeout_s=timeout_s,
        frame_max_bytes=frame_max,
        stream_cap_bytes=limits.stdout_mb * MIB,
        stdout_pipe=stdout_pipe,
    )


# The Engine API's names for create_kwargs(): container config, then host config.
_CONFIG_FIELDS = {
    "hostname": "Hostname",
    "user": "User",
    "tty": "Tty",
    "command": "Cmd",
    "image": "Image",
    "network_disabled": "NetworkDisabled",
    "labels": "Labels",
}
_HOST_FIELDS = {
    "mem_limit": "Memory",
    "memswap_limit": "MemorySwap",
    "mem_swappiness": "MemorySwappiness",
    "shm_size": "ShmSize",
    "ipc_mode": "IpcMode",
    "oom_score_adj": "OomScoreAdj",
    "read_only": "ReadonlyRootfs",
    "network_mode": "NetworkMode",
    "cap_drop": "CapDrop",
    "security_opt": "SecurityOpt",
    "tmpfs": "Tmpfs",
    "pids_limit": "PidsLimit",
    "init": "Init",
    "nano_cpus": "NanoCpus",
    "runtime": "Runtime",
    "mounts": "Mounts",
    "cgroupns": "CgroupnsMode",
}
# Sent only when switched on (the SDK's rule), or client-side only: each must have this value.
_OMITTED = {"privileged": False, "auto_remove": False, "use_config_proxy": False}


def engine_body(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Create kwargs -> API body. Refuses a keyword it has no translation for, or one it would
    leave out while it asks for something, so a new hardening flag can never be dropped."""
    unknown = set(kwargs) - {
        *_CONFIG_FIELDS,
        *_HOST_FIELDS,
        *_OMITTED,
        "environment",
        "stdin_open",
        "ulimits",
        "log_config",
        "name",  # the query string's
    }
    asking = [key for key, off in _OMITTED.items() if kwargs.get(key, off) != off]
    if unknown or asking:
        msg = f"no Engine API translation for create kwargs {sorted(unknown | set(asking))}"
        raise ValueError(msg)
    host = {api: kwargs[key] for key, api in _HOST_FIELDS.items()}
    host["Ulimits"] = [
        {"Name": u["name"], "Soft": u["soft"], "Hard": u["hard"]} for u in kwargs["ulimits"]
    ]
    host["LogConfig"] = {
        "Type": kwargs["log_config"]["type"],
        "Config": kwargs["log_config"]["config"],
    }
    stdin = bool(kwargs["stdin_open"])
    return {
        **{api: kwargs[key] for key, api in _CONFIG_FIELDS.items()},
        "OpenStdin": stdin,
        "StdinOnce": stdin,
        "AttachStdin": stdin,
        "AttachStdout": True,
        "AttachStderr": True,
        "Env": [f"{key}={value}" for key, value in kwargs["environment"].items()],
        "HostConfig": host,
    }
