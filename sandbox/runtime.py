"""What the coordinator needs from a container engine: the ``ContainerRuntime`` protocol and its
value types. ``docker_runtime`` implements it for Docker; ``fake_runtime`` for unit tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

from .spec import ContainerSpec

StreamName = Literal["stdout", "stderr"]


@dataclass(frozen=True)
class ExitState:
    """How a container ended, as the engine reports it."""

    exit_code: int | None
    oom_killed: bool


@dataclass(frozen=True)
class ResourceUsage:
    """Cgroup counters sampled while a container runs (None where the host hides them)."""

    pids_limit_hits: int | None
    memory_peak_bytes: int | None


@dataclass(frozen=True)
class ManagedContainer:
    """A container carrying our labels."""

    id: str
    name: str
    labels: dict[str, str]
    state: str


@dataclass(frozen=True)
class EngineInfo:
    version: str
    api_version: str
    runtimes: tuple[str, ...]
    cgroup_version: str
    # For `sandbox doctor`: component versions (runc, containerd, docker-init), each runtime's
    # extra arguments, the engine's data directory and its security options.
    components: tuple[tuple[str, str], ...] = ()
    runtime_args: tuple[tuple[str, tuple[str, ...]], ...] = ()
    root_dir: str = ""
    security_options: tuple[str, ...] = ()


class Attachment(Protocol):
    """The container's stdio, attached before start."""

    def send_stdin(self, data: bytes) -> None:
        """Write ``data`` to the container's stdin, then close it."""

    def chunks(self) -> Iterator[tuple[StreamName, bytes]]:
        """Output as it arrives, until the container's stdout and stderr close."""

    def close(self) -> None:
        """Release the connection; unblocks a reader."""


class ContainerRuntime(Protocol):
    """The engine operations a run uses. Errors are raised as SandboxError subclasses."""

    def check_image(self, name: str, pinned_id: str) -> None:
        """Raise InfrastructureError unless ``name`` exists here with id ``pinned_id``."""

    def create(self, spec: ContainerSpec) -> str:
        """Create (never pull, never start) the container; return its id."""

    def takes_stdout_pipe(self, pinned_id: str, runtime: str) -> bool:
        """Whether a container of the image (as ``check_image`` found it) under the OCI
        ``runtime`` can take its stdout through a host pipe (``stdout_pipe``)."""

    def attach(self, container_id: str, stdout_pipe: int | None = None) -> Attachment:
        """The container's stdio; with ``stdout_pipe`` (the reading end of the pipe its spec
        mounts), stdout comes from the pipe and only stdin and stderr use the engine."""

    def start(self, container_id: str) -> None: ...

    def kill(self, container_id: str) -> None:
        """SIGKILL; a container that already ended is not an error."""

    def wait(self, container_id: str, timeout_s: float) -> ExitState:
        """Block until the container ends (at most ``timeout_s``) and report how."""

    def remove(self, container_id: str) -> None:
        """Force-remove; a container already gone is not an error."""

    def usage(self, container_id: str) -> ResourceUsage:
        """Sample the running container's pids-limit hits and memory peak (cheap, best effort)."""

    def list_managed(self) -> list[ManagedContainer]:
        """Every container (running or not) with our ``managed`` label."""

    def info(self) -> EngineInfo: ...
