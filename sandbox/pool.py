"""The warm pool: containers created ahead of need, never started until a run claims one, each
used exactly once and then removed; and the background remover that takes removal off a run's
critical path. Used by ``sandbox serve`` (docs/performance.md explains the design).

What may be created ahead is what does not depend on the request. A pooled container is built
by ``build_spec`` from the policy alone: no inputs and no output directory (the mount list is
fixed at create), the policy's own deadline baked into the in-container ``timeout -s KILL``
(the coordinator's watchdog enforces a request's lower one), and the same labels as any run's
container, owned by the server process, so ``sandbox reap`` treats an abandoned pool like any
other leftover. Requests with inputs or an output directory never get a pooled container.

Keys are (tool, policy sha256, image id): a policy edited on disk gets a new key at its next
run, and the containers of the old one are removed at once.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .errors import SandboxError
from .log import logger
from .policy import LoadedPolicy
from .runtime import ContainerRuntime
from .spec import LABEL_POOL, ContainerSpec, Owner, build_spec

# A created container the pool does not hand out within this long is replaced: the deadline
# label (for reapers on other hosts) is set this far ahead, plus the policy's timeout.
MAX_IDLE_S = 600.0
# At most this many idle pooled containers on the engine (every server on the host counts them),
# whatever the policies ask for.
DEFAULT_MAX_TOTAL = 8
# After a failed create, the refiller waits this long before trying that key again.
CREATE_BACKOFF_S = 5.0
# Removal attempts of one container before the remover gives up (``sandbox reap`` remains).
REMOVE_ATTEMPTS = 5

# Background engine work waits at most this long for starts in flight to finish.
QUIET_WAIT_S = 1.0

PoolKey = tuple[str, str, str]


class StartGate:
    """Counts container starts in flight, so that background engine work (refills, removals)
    can wait for a quiet moment: on two cores a create or remove that runs beside a start
    slows the start, which is on a run's critical path, while theirs are not."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._starting = 0

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        with self._cond:
            self._starting += 1
        try:
            yield
        finally:
            with self._cond:
                self._starting -= 1
                self._cond.notify_all()

    def wait_quiet(self, timeout_s: float = QUIET_WAIT_S) -> None:
        """Return once no start is in flight, or after ``timeout_s`` (never starve)."""
        with self._cond:
            self._cond.wait_for(lambda: self._starting == 0, timeout=timeout_s)


def pool_key(loaded: LoadedPolicy) -> PoolKey:
    return (loaded.policy.tool, loaded.sha256, loaded.policy.image.id)


@dataclass(frozen=True)
class Slot:
    """A created, never started container, and the spec it was created from."""

    container_id: str
    spec: ContainerSpec
    key: PoolKey
    created_at: float


class BackgroundRemover:
    """Removes exited containers on a thread of its own, in order, retrying failures.

    ``close`` returns once every submitted container is removed (or has failed all its
    attempts, which is logged; the container then carries its owner's labels for the reaper).
    """

    def __init__(
        self,
        runtime: ContainerRuntime,
        *,
        retry_delay_s: float = 0.5,
        gate: StartGate | None = None,
    ) -> None:
        self._runtime = runtime
        self._gate = gate
        self._retry_delay_s = retry_delay_s
        self._queue: collections.deque[tuple[str, int]] = collections.deque()
        self._cond = threading.Condition()
        self._busy = 0
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="sandbox-remover", daemon=True)
        self._thread.start()

    def submit(self, container_id: str) -> None:
        with self._cond:
            self._queue.append((container_id, 0))
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + self._busy

    def close(self, timeout_s: float = 60.0) -> bool:
        """Wait until the queue is empty; True when every container was handled in time."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while (self._queue or self._busy) and time.monotonic() < deadline:
                self._cond.wait(0.1)
            left = len(self._queue) + self._busy
        if left:
            logger.error("{} container(s) not removed at shutdown; `sandbox reap` will", left)
        return left == 0

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                container_id, attempt = self._queue.popleft()
                self._busy += 1
            try:
                if self._gate is not None:
                    self._gate.wait_quiet()
                self._runtime.remove(container_id)
            except SandboxError as exc:
                self._failed(container_id, attempt, exc)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def _failed(self, container_id: str, attempt: int, exc: SandboxError) -> None:
        if attempt + 1 >= REMOVE_ATTEMPTS:
            logger.error("could not remove container {}: {}", container_id[:12], exc)
            return
        logger.warning("removing container {} failed ({}); retrying", container_id[:12], exc)
        time.sleep(self._retry_delay_s * (attempt + 1))
        with self._cond:
            self._queue.append((container_id, attempt + 1))


@dataclass
class _Entry:
    loaded: LoadedPolicy
    idle: collections.deque[Slot] = field(default_factory=collections.deque)
    creating: int = 0
    retry_at: float = 0.0


class WarmPool:
    """Pre-created containers per policy, refilled by one background thread.

    ``claim`` never waits for the engine: it hands out an idle container or None (the run then
    creates its own). Claimed containers are the run's: the coordinator starts, waits for and
    removes them exactly as it would a container of its own.
    """

    def __init__(
        self,
        runtime: ContainerRuntime,
        *,
        owner: Owner,
        remover: BackgroundRemover,
        gate: StartGate | None = None,
        max_total: int = DEFAULT_MAX_TOTAL,
        max_idle_s: float = MAX_IDLE_S,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._runtime = runtime
        self._owner = owner
        self._remover = remover
        self._gate = gate
        self._max_total = max_total
        self._max_idle_s = max_idle_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._entries: dict[PoolKey, _Entry] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="sandbox-pool", daemon=True)
        self._thread.start()

    # --- what the coordinator calls -------------------------------------------------------

    def want(self, loaded: LoadedPolicy) -> None:
        """Keep ``policy.pool.warm`` containers of this policy ready (capped host-wide)."""
        if loaded.policy.pool.warm <= 0:
            return
        key = pool_key(loaded)
        with self._cond:
            if self._closed or key in self._entries:
                return
            stale = [k for k in self._entries if k[0] == key[0]]
            for old in stale:  # the policy changed on disk: its old containers go
                for slot in self._entries.pop(old).idle:
                    self._remover.submit(slot.container_id)
            self._entries[key] = _Entry(loaded)
            self._cond.notify_all()

    def claim(self, loaded: LoadedPolicy) -> Slot | None:
        """An idle container created for exactly this policy and image, or None."""
        self.want(loaded)
        key = pool_key(loaded)
        with self._cond:
            entry = self._entries.get(key)
            if entry is None or not entry.idle:
                return None
            slot = entry.idle.popleft()
            self._cond.notify_all()  # a refill is due
        return slot

    def idle_count(self, key: PoolKey | None = None) -> int:
        with self._cond:
            entries = [self._entries[key]] if key in self._entries else []
            if key is None:
                entries = list(self._entries.values())
            return sum(len(e.idle) for e in entries)

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop refilling and hand every idle container to the remover."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        with self._cond:
            slots = [slot for entry in self._entries.values() for slot in entry.idle]
            self._entries.clear()
        for slot in slots:
            self._remover.submit(slot.container_id)

    # --- the refiller ---------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                job = self._next_job()
                while job is None and not self._closed:
                    self._cond.wait(timeout=self._wake_in())
                    job = self._next_job()
                if self._closed:
                    return
                assert job is not None  # noqa: S101 - the loop above leaves only with one
                key, entry = job
                entry.creating += 1
            self._create(key, entry)

    def _next_job(self) -> tuple[PoolKey, _Entry] | None:
        """The next key short of its target (caller holds the lock); evicts stale containers."""
        now = self._clock()
        total = 0
        for entry in self._entries.values():
            while entry.idle and now - entry.idle[0].created_at > self._max_idle_s:
                self._remover.submit(entry.idle.popleft().container_id)
            total += len(entry.idle) + entry.creating
        if total >= self._max_total:
            return None
        for key, entry in self._entries.items():
            have = len(entry.idle) + entry.creating
            if have < entry.loaded.policy.pool.warm and now >= entry.retry_at:
                return key, entry
        return None

    def _wake_in(self) -> float:
        retry = [e.retry_at for e in self._entries.values() if e.retry_at > self._clock()]
        return max(0.05, min([*retry, self._clock() + 60.0]) - self._clock())

    def _create(self, key: PoolKey, entry: _Entry) -> None:
        spec = self._spec(entry.loaded)
        if self._gate is not None:
            self._gate.wait_quiet()
        try:
            if self._idle_on_engine() >= self._max_total:
                logger.debug(
                    "warm pool: the engine holds {} idle pooled containers", self._max_total
                )
                self._back_off(entry)
                return
            container_id = self._runtime.create(spec)
        except SandboxError as exc:
            logger.warning("warm pool: creating a {} container failed: {}", key[0], exc)
            self._back_off(entry)
            return
        slot = Slot(container_id=container_id, spec=spec, key=key, created_at=self._clock())
        with self._cond:
            entry.creating -= 1
            if self._closed or self._entries.get(key) is not entry:
                self._remover.submit(container_id)  # closed or superseded meanwhile
                return
            entry.idle.append(slot)
            self._cond.notify_all()

    def _back_off(self, entry: _Entry) -> None:
        with self._cond:
            entry.creating -= 1
            entry.retry_at = self._clock() + CREATE_BACKOFF_S

    def _idle_on_engine(self) -> int:
        """Idle (created, never started) pooled containers on the engine, whichever server on
        the host made them: the cap is the host's, not this server's. A claimed container is
        started at once and stops counting."""
        return sum(
            1
            for c in self._runtime.list_managed()
            if c.labels.get(LABEL_POOL) == "1" and c.state == "created"
        )

    def _spec(self, loaded: LoadedPolicy) -> ContainerSpec:
        policy = loaded.policy
        timeout_s = policy.limits.timeout_s
        spec = build_spec(
            policy,
            run_id=f"pool{uuid.uuid4().hex[:28]}",
            policy_sha256=loaded.sha256,
            inputs={},
            staging_dir=None,
            timeout_s=timeout_s,
            owner=self._owner,
            deadline=self._wall_clock() + self._max_idle_s + timeout_s,
        )
        return dataclasses.replace(spec, labels=(*spec.labels, (LABEL_POOL, "1")))
