"""A run's stdout pipe: a named pipe on the host, mounted into the container, that the tool's
stdout is bound to by the in-image launcher (``--stdout``) and that the coordinator reads.

Through the engine, every byte a tool prints is copied by containerd's shim into a pipe of
dockerd's, by dockerd into the attach socket with a stream header per ≤32 KiB, and only then
read here: on two cores that relay, not the tool or the coordinator, set the pace (a 200 MiB
stream took ≈0.7 s of engine time through attach against ≈0.1 s through a pipe, measured by the
same bare-SDK lifecycle). Stderr and stdin still go through the attach socket.

The pipe sits alone in a private directory (0700, made by ``mkdtemp`` in ``TMPDIR``, named
after its owner the way containers are labelled, so ``sandbox reap`` can remove what a killed
coordinator left) that nothing in the container can see; the pipe itself is 0622, so the tool's
user, whatever its uid, can write to it and never read it. The coordinator opens its end before
the container is created, so the launcher's non-blocking open finds a reader or fails at once.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

from .errors import InfrastructureError
from .log import logger
from .spec import Owner

PIPE_BYTES = 1024 * 1024  # Linux's unprivileged maximum (/proc/sys/fs/pipe-max-size)
DIR_PREFIX = "sandbox-pipe-"
_NAME = "stdout"


def widen(fd: int) -> None:
    """Give a pipe 1 MiB of buffer instead of 64 KiB: a large frame then costs one write, not
    a write per 64 KiB and a switch to the reader. Anything else (a file, a terminal, a user
    over its pipe quota) keeps what it has."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except OSError as exc:
        logger.debug("pipe buffer not widened: {}", exc)


class StdoutPipe:
    """The host end of one run's stdout pipe, open for reading (non-blocking)."""

    def __init__(self, directory: Path, fd: int) -> None:
        self.directory = directory
        self.fd = fd

    @property
    def path(self) -> str:
        return str(self.directory / _NAME)

    @classmethod
    def create(cls, owner: Owner) -> StdoutPipe:
        try:
            directory = Path(tempfile.mkdtemp(prefix=_owner_prefix(owner)))
        except OSError as exc:
            raise _not_made(tempfile.gettempdir(), exc) from exc
        path = directory / _NAME
        try:
            os.mkfifo(path, 0o600)
            # Write for everyone, not left to the umask: the tool's uid is not ours, and only
            # this process can reach the 0700 directory the pipe is in.
            path.chmod(0o622)  # noqa: S103
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            _remove(directory)
            raise _not_made(str(directory), exc) from exc
        widen(fd)
        return cls(directory, fd)

    def close(self) -> None:
        """Close the reading end and remove the pipe and its directory; idempotent."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        _remove(self.directory)


def _owner_prefix(owner: Owner) -> str:
    return f"{DIR_PREFIX}{owner.pid}-{owner.start_time:.3f}-{owner.host}-"  # as the labels


def _owner_of(directory: Path) -> Owner | None:
    """The owner a pipe directory's name gives; None if it is not one of ours."""
    pid, start, rest = (directory.name[len(DIR_PREFIX) :].split("-", 2) + ["", ""])[:3]
    host = rest.rpartition("-")[0]  # mkdtemp's random part has no "-"
    try:
        return Owner(pid=int(pid), start_time=float(start), host=host)
    except ValueError:
        return None


def leftovers() -> list[tuple[Path, Owner]]:
    """This user's pipe directories in ``TMPDIR`` with their owners, for the reaper (the
    coordinator's ``should_reap`` decides, as for containers)."""
    found = []
    for directory in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*"):
        owner = _owner_of(directory)
        try:
            mine = directory.lstat().st_uid == os.geteuid() and directory.is_dir()
        except OSError:
            continue
        if owner is not None and mine:
            found.append((directory, owner))
    return found


def remove(directory: Path) -> bool:
    """Remove a pipe directory left behind; whether it is gone."""
    _remove(directory)
    return not directory.exists()


def _remove(directory: Path) -> None:
    try:
        (directory / _NAME).unlink(missing_ok=True)
        directory.rmdir()
    except FileNotFoundError:
        return
    except OSError as exc:
        logger.warning("could not remove the stdout pipe's directory {}: {}", directory, exc)


def _not_made(where: str, exc: OSError) -> InfrastructureError:
    return InfrastructureError(
        f"could not make the run's stdout pipe in {where}: {exc}",
        fix="point TMPDIR at a writable directory the Docker engine can bind-mount from",
    )
