"""The floor: the bare docker SDK doing the same work as one run, with the same hardening.

create -> attach the raw socket (``logs=0``, before start) -> write the request line to stdin ->
start -> read the attach socket to EOF without parsing it -> wait -> remove. Nothing of
``sandbox`` runs on the clock except ``build_spec``, a pure function of a few microseconds.

The create kwargs are ``build_spec(...).create_kwargs()``, the coordinator's own, with one
difference in the default (conventional) floor: the network is switched off the way a user of
the SDK or ``docker run --network none`` does it, ``network_mode="none"`` alone. Our spec also
sets ``NetworkDisabled``, which gives the same isolation (only loopback; tested) without the
engine's network-sandbox setup and is one of the lean-start choices the bench measures
(docs/performance.md). ``lean=True`` gives the floor with exactly our kwargs, reported beside it.
``pipe=True`` (lean too) is the same with our transport for stdout: the run's stdout pipe
(``sandbox.stdout_pipe``) mounted and read directly, stderr from the attach socket.
"""

from __future__ import annotations

import json
import os
import select
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

import docker
from docker.models.containers import (  # type: ignore[attr-defined]
    _create_container_args,
)

from sandbox.policy import LoadedPolicy
from sandbox.spec import Owner, build_spec
from sandbox.stdout_pipe import StdoutPipe

RECV = 256 * 1024


@dataclass(frozen=True)
class Cycle:
    seconds: float
    bytes: int
    # From the first byte of container output to the end of the cycle: the streaming phase.
    streaming_s: float = 0.0


class Floor:
    """Bare SDK lifecycles on one low-level client (connection reused, as a server would)."""

    def __init__(
        self, loaded: LoadedPolicy, owner: Owner, *, lean: bool = False, pipe: bool = False
    ) -> None:
        self.api = docker.APIClient(version="auto")
        self.loaded = loaded
        self.owner = owner
        self.lean = lean or pipe
        self.pipe = pipe

    def close(self) -> None:
        self.api.close()

    def kwargs(self, pipe: StdoutPipe | None = None) -> dict[str, Any]:
        run_id = uuid.uuid4().hex
        policy = self.loaded.policy
        spec = build_spec(
            policy,
            run_id=run_id,
            policy_sha256=self.loaded.sha256,
            inputs={},
            staging_dir=None,
            timeout_s=policy.limits.timeout_s,
            owner=self.owner,
            deadline=time.time() + policy.limits.timeout_s,
            stdout_pipe=pipe.path if pipe else None,
        )
        kwargs = spec.create_kwargs()
        if not self.lean:
            kwargs["network_disabled"] = False
        args = _create_container_args({**kwargs, "version": self.api.api_version})
        return dict(args)

    def once(self, args: dict[str, Any]) -> Cycle:
        """One full lifecycle; returns its wall time and the raw bytes read from the socket."""
        line = json.dumps({"run_id": "floor", "args": args, "inputs": {}, "output_dir": None})
        began = time.perf_counter()
        pipe = StdoutPipe.create(self.owner) if self.pipe else None
        container = self.api.create_container(**self.kwargs(pipe))["Id"]
        try:
            stdout = 0 if pipe else 1
            params = {"stdin": 1, "stdout": stdout, "stderr": 1, "stream": 1, "logs": 0}
            raw = self.api.attach_socket(container, params=params)
            sock: socket.socket = raw._sock if hasattr(raw, "_sock") else raw
            sock.settimeout(None)
            sock.sendall(line.encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)
            self.api.start(container)
            if pipe:
                total, first = _read_piped(sock, pipe.fd)
            else:
                total, first = _read(sock)
            sock.close()
            self.api.wait(container)
        finally:
            self.api.remove_container(container, force=True, v=True)
            if pipe:
                pipe.close()
        ended = time.perf_counter()
        return Cycle(ended - began, total, ended - (first or ended))


def _read(sock: socket.socket) -> tuple[int, float | None]:
    """Bytes read to EOF, and when the first came."""
    total = 0
    first: float | None = None
    while data := sock.recv(RECV):
        if first is None:
            first = time.perf_counter()
        total += len(data)
    return total, first


def _read_piped(sock: socket.socket, fd: int) -> tuple[int, float | None]:
    """The socket (stderr) and the pipe (stdout), each to its end (the launcher always opens
    the pipe, so its end comes)."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(fd, select.POLLIN)
    total, first, open_ends = 0, None, 2
    while open_ends:
        for ready, _ in poller.poll():
            try:
                data = sock.recv(RECV) if ready == sock.fileno() else os.read(fd, RECV)
            except BlockingIOError:
                continue
            if not data:
                poller.unregister(ready)
                open_ends -= 1
                continue
            if first is None:
                first = time.perf_counter()
            total += len(data)
    return total, first
