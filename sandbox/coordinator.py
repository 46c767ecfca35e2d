"""The one orchestrator: ``Coordinator.run(request)`` yields one run's frames, ending with exactly
one ``exit`` frame, whatever happens (``run_batches``: the same, grouped as they become ready).
Talks to the engine only through ``ContainerRuntime``.

"Could not run" (invalid, denied, engine trouble) is raised inside and reported as an ``error``
frame; "ran and failed" (non-zero exit, timeout, OOM, limits) is data read from the engine. The
container is removed and outputs published or set aside *before* the exit frame is made.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import hostcheck, staging, stdout_pipe
from .audit import AuditLog, RunFacts
from .errors import (
    InfrastructureError,
    Interrupted,
    ResourceLimit,
    SandboxError,
    Status,
    Timeout,
    ToolError,
)
from .frames import Frame, FrameFactory
from .log import logger
from .policy import LoadedPolicy, PolicyCache, authorize, effective_timeout
from .request import Request
from .runtime import Attachment, ContainerRuntime, ExitState, ResourceUsage
from .spec import (
    FRAME_OVERHEAD_BYTES,
    INPUTS_DIR,
    LABEL_DEADLINE,
    LABEL_OWNER_HOST,
    LABEL_OWNER_PID,
    LABEL_OWNER_START,
    OUTPUT_DIR,
    ContainerSpec,
    Owner,
    build_spec,
    owner_labels,
)
from .stdout_pipe import StdoutPipe
from .stream import FrameAssembler

if TYPE_CHECKING:
    from .pool import BackgroundRemover, Slot, StartGate, WarmPool

# The reader thread samples cgroup counters at most this often (a file read each).
READER_SAMPLE_S = 0.005
# After the deadline the engine gets this long to report the container's end.
WAIT_GRACE_S = 15.0
ABANDONED = "the caller stopped reading the run's frames; its container was removed"
# A container whose deadline passed this long ago is reaped even if its owner looks alive.
REAP_AFTER_DEADLINE_S = 60.0


def new_run_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Outcome:
    """What the exit frame will say."""

    status: Status = "ok"
    exit_code: int | None = None
    oom_killed: bool = False
    outputs: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)
    error: SandboxError | None = None
    script_reported_error: bool = False
    partial_outputs: str | None = None
    # What the audit record needs, filled in as the run gets that far.
    loaded: LoadedPolicy | None = None
    spec: ContainerSpec | None = None
    limits: dict[str, Any] | None = None
    container_created: bool = False
    memory_peak_bytes: int | None = None

    def fail(self, error: SandboxError) -> None:
        """Record a failure; the first one decides the status."""
        if self.error is None:
            self.error = error
            self.status = error.status


class Watchdog:
    """Kills the container at the deadline, on cancel, or when outputs grow past the limit.

    A thread polling the injected clock, so unit tests can move time; if the engine does not
    end the stream after a kill, it closes the attach socket so the reader never hangs.
    """

    def __init__(
        self,
        *,
        kill: Callable[[], None],
        sample: Callable[[], ResourceUsage],
        attachment: Attachment,
        deadline: float,
        clock: Callable[[], float],
        cancel: threading.Event,
        stage: staging.OutputStaging | None,
        max_output_bytes: int,
        poll_s: float,
        output_poll_s: float,
    ) -> None:
        self.reason: str | None = None
        self.pids_limit_hits = 0
        self.memory_peak_bytes: int | None = None
        self._kill = kill
        self._sample = sample
        self._attachment = attachment
        self._deadline = deadline
        self._clock = clock
        self._cancel = cancel
        self._stage = stage
        self._max_output = max_output_bytes
        self._poll_s = poll_s
        self._output_poll_s = output_poll_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._tripped_at: float | None = None
        self._last_reader_sample = float("-inf")
        self._thread = threading.Thread(target=self._loop, name="sandbox-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def trip(self, reason: str) -> None:
        """Ask for the container to be killed. Never blocks: the engine's kill waits for the
        container's output to drain, so the reader thread must go on reading meanwhile."""
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
        logger.info("stopping container: {}", reason)
        self._wake.set()

    def sample_soon(self) -> None:
        """A throttled sample from the reader thread: a tool that dies of a limit usually
        writes its last words (a traceback) while its cgroup, and its counters, still exist;
        the container may be gone before the next poll."""
        now = self._clock()
        # The reader's own clock: a poll by the watchdog a moment ago says nothing about the
        # chunk that just arrived.
        if now - self._last_reader_sample >= READER_SAMPLE_S:
            self._last_reader_sample = now
            self.record_usage()

    def record_usage(self) -> None:
        if self._tripped_at is not None:
            return
        usage = self._sample()
        if usage.pids_limit_hits:
            self.pids_limit_hits = max(self.pids_limit_hits, usage.pids_limit_hits)
        if usage.memory_peak_bytes is not None:
            self.memory_peak_bytes = max(self.memory_peak_bytes or 0, usage.memory_peak_bytes)

    def _kill_now(self) -> None:
        self._tripped_at = self._clock()
        try:
            self._kill()
        except SandboxError as exc:
            logger.warning("kill failed: {}", exc)

    def _loop(self) -> None:
        next_measure = self._clock()
        while not self._stop.is_set():
            self._wake.wait(self._poll_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            now = self._clock()
            self.record_usage()
            if self._cancel.is_set():
                self.trip("interrupted")
            elif now >= self._deadline:
                self.trip("timeout")
            elif self._stage is not None and now >= next_measure:
                next_measure = now + self._output_poll_s
                if staging.measure(self._stage.staging).over(self._max_output):
                    self.trip("output")
            if self.reason is not None and self._tripped_at is None:
                self._kill_now()
            elif self._tripped_at is not None and now >= self._tripped_at + WAIT_GRACE_S:
                logger.warning("engine did not end the stream after a kill; closing it")
                self._attachment.close()
                return


@dataclass
class Coordinator:
    """Runs requests against the policies in ``policy_dir`` on ``runtime``."""

    runtime: ContainerRuntime
    policy_dir: Path
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    owner: Owner | None = None
    poll_s: float = 0.1
    output_poll_s: float = 0.5
    admission: Callable[[int], None] | None = None
    # Optional: one record per run; when given, a log that cannot be written refuses the run.
    audit: AuditLog | None = None
    # Optional (``sandbox serve``): pre-created containers for requests without mounts, and a
    # remover that takes an exited container's removal off the run's critical path.
    pool: WarmPool | None = None
    remover: BackgroundRemover | None = None
    start_gate: StartGate | None = None
    # Parsed policies and compiled schemas, reused while a policy file's bytes are unchanged.
    policies: PolicyCache = field(default_factory=PolicyCache)

    def __post_init__(self) -> None:
        if self.owner is None:
            self.owner = hostcheck.current_owner()
        if self.admission is None:
            self.admission = lambda mb: hostcheck.admit_waiting(mb, hostcheck.snapshot)

    # --- the run ---------------------------------------------------------------------------

    def run(
        self,
        request: Request | SandboxError,
        *,
        run_id: str | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[Frame]:
        """One run's frames. A request that failed to parse is passed as its error."""
        batches = self.run_batches(request, run_id=run_id, cancel=cancel)
        try:
            for batch in batches:
                yield from batch
        finally:
            batches.close()  # a caller that stops early still gets the container removed, now

    def run_batches(
        self,
        request: Request | SandboxError,
        *,
        run_id: str | None = None,
        cancel: threading.Event | None = None,
    ) -> Generator[list[Frame], None, None]:
        """``run``'s frames, in the groups they become ready in: all the frames of one read of
        the container's output come together, so a caller can pass them on with one write
        instead of a write (and a wake-up of its reader) per line."""
        frames = FrameFactory(run_id or new_run_id())
        began = self.clock()
        outcome = Outcome()
        audit_ok = True
        try:
            if isinstance(request, SandboxError):
                raise request
            if self.audit is not None:
                audit_ok = False
                self.audit.check()  # fail closed: before any engine call
                audit_ok = True
            yield from self._run(request, frames, outcome, cancel or threading.Event())
        except GeneratorExit:
            # No frame can follow (``_run`` has marked the outcome interrupted); the audit log
            # still gets the run.
            if audit_ok:
                self._record(frames.run_id, request, outcome, self.clock() - began)
            raise
        except SandboxError as exc:
            outcome.fail(exc)
        except Exception as exc:  # noqa: BLE001 - a bug must still end the run with an exit frame
            logger.error("internal error in run {}", frames.run_id, exception=exc)
            outcome.fail(InfrastructureError(f"internal error: {type(exc).__name__}: {exc}"))
        duration = self.clock() - began
        if audit_ok:
            self._record(frames.run_id, request, outcome, duration)
        if outcome.error is not None and not (
            outcome.status == "tool_error" and outcome.script_reported_error
        ):
            error = frames.from_exception(outcome.error)
            if outcome.partial_outputs:
                error["error"]["details"]["partial_outputs"] = outcome.partial_outputs
            yield [error]
        yield [_exit(frames, outcome, duration)]

    def _record(
        self, run_id: str, request: Request | SandboxError, outcome: Outcome, duration: float
    ) -> None:
        """Append the run's audit record; a failure fails an otherwise successful run."""
        if self.audit is None:
            return
        loaded, spec = outcome.loaded, outcome.spec
        facts = RunFacts(
            run_id=run_id,
            request=None if isinstance(request, SandboxError) else request.model_dump(),
            tool=None if isinstance(request, SandboxError) else request.tool,
            policy_sha256=loaded.sha256 if loaded else None,
            image=loaded.policy.image.name if loaded else None,
            image_id=loaded.policy.image.id if loaded else None,
            runtime=loaded.policy.runtime if loaded else None,
            limits=outcome.limits,
            mounts=tuple((m.source, m.target, m.read_only) for m in spec.mounts) if spec else (),
            env_keys=tuple(k for k, _ in spec.env) if spec else (),
            container_created=outcome.container_created,
            exit_frame={
                "status": outcome.status,
                "exit_code": outcome.exit_code,
                "oom_killed": outcome.oom_killed,
                "duration_s": round(duration, 3),
                "outputs": outcome.outputs,
                "refused": outcome.refused,
            },
            error_kind=outcome.error.kind if outcome.error else None,
        )
        try:
            self.audit.record(facts)
        except SandboxError as exc:
            logger.error("audit record of run {} not written: {}", run_id, exc)
            outcome.fail(exc)
        except Exception as exc:  # noqa: BLE001 - a bug must still end the run with an exit frame
            logger.error("audit record of run {} not written", run_id, exception=exc)
            outcome.fail(InfrastructureError(f"audit record not written: {exc}"))

    def _run(
        self, request: Request, frames: FrameFactory, outcome: Outcome, cancel: threading.Event
    ) -> Iterator[list[Frame]]:
        loaded = self.policies.find(self.policy_dir, request.tool)
        outcome.loaded = loaded
        policy = loaded.policy
        authorize(loaded, request)
        inputs = staging.resolve_inputs(request.inputs, loaded.allowed_roots)
        # `is not None`: an empty string is a bad output_dir, not a request without one.
        output_dir = (
            staging.check_output_dir(request.output_dir) if request.output_dir is not None else None
        )
        timeout_s = effective_timeout(policy, request)
        self.runtime.check_image(policy.image.name, policy.image.id)
        assert self.admission is not None  # noqa: S101 - set in __post_init__
        self.admission(policy.limits.memory_mb)
        stage = staging.prepare_output(output_dir, frames.run_id) if output_dir else None
        # Only a request without mounts can take a pre-created container (docs/performance.md).
        slot = self.pool.claim(loaded) if self.pool and not inputs and stage is None else None
        pipe: StdoutPipe | None = None
        try:
            if slot is not None:
                # The container's own deadline is the policy's; the watchdog enforces ours.
                spec = dataclasses.replace(slot.spec, timeout_s=timeout_s)
            else:
                if self.runtime.takes_stdout_pipe(policy.image.id, policy.runtime):
                    assert self.owner is not None  # noqa: S101 - set in __post_init__
                    pipe = StdoutPipe.create(self.owner)
                spec = self._spec(loaded, frames.run_id, inputs, stage, timeout_s, pipe)
            outcome.spec = spec
            outcome.limits = _effective_limits(spec, loaded, timeout_s)
            yield [
                frames.make(
                    "accepted",
                    tool=policy.tool,
                    image=policy.image.name,
                    image_id=policy.image.id,
                    policy_sha256=loaded.sha256,
                    limits=outcome.limits,
                )
            ]
            yield from self._contain(
                spec, request, frames, outcome, cancel, stage, loaded, slot, pipe
            )
        except GeneratorExit:
            # The caller stopped reading (a closed pipe, a dropped generator): the run did not
            # end on its own, so what it wrote so far is set aside, never published as whole.
            outcome.fail(Interrupted(ABANDONED))
            raise
        finally:
            if pipe is not None:
                pipe.close()
            self._finish_outputs(stage, outcome, loaded)

    def _spec(
        self,
        loaded: LoadedPolicy,
        run_id: str,
        inputs: dict[str, str],
        stage: staging.OutputStaging | None,
        timeout_s: float,
        pipe: StdoutPipe | None,
    ) -> ContainerSpec:
        assert self.owner is not None  # noqa: S101 - set in __post_init__
        return build_spec(
            loaded.policy,
            run_id=run_id,
            policy_sha256=loaded.sha256,
            inputs=inputs,
            staging_dir=str(stage.staging) if stage else None,
            timeout_s=timeout_s,
            owner=self.owner,
            deadline=self.wall_clock() + timeout_s,
            stdout_pipe=pipe.path if pipe else None,
        )

    def _contain(
        self,
        spec: ContainerSpec,
        request: Request,
        frames: FrameFactory,
        outcome: Outcome,
        cancel: threading.Event,
        stage: staging.OutputStaging | None,
        loaded: LoadedPolicy,
        slot: Slot | None = None,
        pipe: StdoutPipe | None = None,
    ) -> Iterator[list[Frame]]:
        container_id = slot.container_id if slot is not None else self.runtime.create(spec)
        outcome.container_created = True
        attachment: Attachment | None = None
        watchdog: Watchdog | None = None
        exited = False
        try:
            attachment = self.runtime.attach(container_id, pipe.fd if pipe else None)
            attachment.send_stdin(_stdin_line(frames.run_id, request, stage is not None))
            if cancel.is_set():
                msg = "interrupted before the container started"
                raise Interrupted(msg)
            deadline = self.clock() + spec.timeout_s
            if self.start_gate is not None:
                with self.start_gate.starting():
                    self.runtime.start(container_id)
            else:
                self.runtime.start(container_id)
            yield [frames.make("started", container_id=container_id)]
            watchdog = Watchdog(
                kill=lambda: self.runtime.kill(container_id),
                sample=lambda: self.runtime.usage(container_id),
                attachment=attachment,
                deadline=deadline,
                clock=self.clock,
                cancel=cancel,
                stage=stage,
                max_output_bytes=loaded.policy.output.max_mb * 1024 * 1024,
                poll_s=self.poll_s,
                output_poll_s=self.output_poll_s,
            )
            watchdog.start()
            yield from self._stream(attachment, frames, outcome, watchdog, spec)
            watchdog.record_usage()  # a last sample: short runs may end between polls
            # A tool may close stdout and stderr and go on running: the stream ends, the
            # container does not, and the watchdog still owes it its deadline.
            remaining = max(0.0, deadline - self.clock())
            state = self.runtime.wait(container_id, remaining + WAIT_GRACE_S)
            exited = True
            watchdog.stop()
            past_deadline = self.clock() >= deadline
            outcome.memory_peak_bytes = watchdog.memory_peak_bytes
            _classify(
                outcome,
                state,
                watchdog.reason,
                spec,
                loaded,
                past_deadline=past_deadline,
                pids_limit_hits=watchdog.pids_limit_hits,
                memory_peak_bytes=watchdog.memory_peak_bytes,
            )
        finally:
            if watchdog is not None:
                watchdog.stop()
            if attachment is not None:
                attachment.close()
            if exited and self.remover is not None and watchdog and watchdog.reason is None:
                # It ended on its own: nothing can write to its mounts any more, so the exit
                # frame need not wait for the removal; the remover retries and shutdown waits
                # for it. A killed run (timeout, cancel, limits) still answers after removal.
                self.remover.submit(container_id)
            else:
                self._remove(container_id, outcome)

    def _stream(
        self,
        attachment: Attachment,
        frames: FrameFactory,
        outcome: Outcome,
        watchdog: Watchdog,
        spec: ContainerSpec,
    ) -> Iterator[list[Frame]]:
        assembler = FrameAssembler(
            frames, frame_max=spec.frame_max_bytes, stream_cap=spec.stream_cap_bytes
        )
        for stream, chunk in attachment.chunks():
            for batch in assembler.batches(stream, chunk):
                _note_script_errors(outcome, batch)
                yield batch
            if assembler.over_cap:
                watchdog.trip("stream")
            watchdog.sample_soon()
        batch = assembler.flush()
        if batch:
            _note_script_errors(outcome, batch)
            yield batch

    def _remove(self, container_id: str, outcome: Outcome) -> None:
        try:
            self.runtime.remove(container_id)
        except SandboxError as exc:
            logger.error("could not remove container {}: {}", container_id[:12], exc)
            outcome.fail(exc)

    def _finish_outputs(
        self, stage: staging.OutputStaging | None, outcome: Outcome, loaded: LoadedPolicy
    ) -> None:
        if stage is None:
            return
        if outcome.status == "ok":
            try:
                outcome.outputs, outcome.refused = staging.publish(
                    stage,
                    loaded.policy.output.max_mb * 1024 * 1024,
                    max_listing_bytes=loaded.policy.limits.frame_kb * 1024 - FRAME_OVERHEAD_BYTES,
                )
                return
            except SandboxError as exc:
                outcome.fail(exc)
            except OSError as exc:
                outcome.fail(InfrastructureError(f"could not publish outputs: {exc}"))
        try:
            kept = staging.set_aside(stage)
        except OSError as exc:
            logger.error("could not set aside partial outputs: {}", exc)
            return
        outcome.partial_outputs = str(kept) if kept else None

    # --- housekeeping ----------------------------------------------------------------------

    def reap(self) -> list[str]:
        """Remove containers whose owning coordinator is gone; never a live one's. Their stdout
        pipes' directories go too."""
        assert self.owner is not None  # noqa: S101 - set in __post_init__
        removed = []
        now = self.wall_clock()
        for container in self.runtime.list_managed():
            if should_reap(container.labels, self.owner, now, hostcheck.owner_alive):
                self.runtime.remove(container.id)
                removed.append(container.id)
        pipes = 0
        for directory, owner in stdout_pipe.leftovers():
            # A pipe has no deadline: another host's (a shared TMPDIR) is never reaped here.
            labels = {**owner_labels(owner), LABEL_DEADLINE: "inf"}
            if should_reap(labels, self.owner, now, hostcheck.owner_alive):
                pipes += stdout_pipe.remove(directory)
        if pipes:
            logger.info("removed {} stdout pipe(s) of coordinators that are gone", pipes)
        return removed


def _note_script_errors(outcome: Outcome, batch: list[Frame]) -> None:
    if any(frame["type"] == "error" for frame in batch):
        outcome.script_reported_error = True


def refused_frames(error: SandboxError, run_id: str | None = None) -> list[Frame]:
    """The error and exit frames of a run refused before any engine call (e.g. bad argv)."""
    frames = FrameFactory(run_id or new_run_id())
    outcome = Outcome()
    outcome.fail(error)
    return [frames.from_exception(error), _exit(frames, outcome, 0.0)]


def _exit(frames: FrameFactory, outcome: Outcome, duration: float) -> Frame:
    extra = {"partial_outputs": outcome.partial_outputs} if outcome.partial_outputs else {}
    return frames.make(
        "exit",
        status=outcome.status,
        exit_code=outcome.exit_code,
        oom_killed=outcome.oom_killed,
        duration_s=round(duration, 3),
        outputs=outcome.outputs,
        refused=outcome.refused,
        **extra,
    )


def should_reap(
    labels: dict[str, str], me: Owner, now: float, alive: Callable[[int, float], bool]
) -> bool:
    """Pure reaping rule: the owner is gone, or (owner on another host) the deadline is past."""
    try:
        pid = int(labels[LABEL_OWNER_PID])
        start = float(labels[LABEL_OWNER_START])
        deadline = float(labels.get(LABEL_DEADLINE, "0"))
    except (KeyError, ValueError):
        return True  # labelled ours but unreadable: nobody can be waiting on it
    if labels.get(LABEL_OWNER_HOST) != me.host:
        return now > deadline + REAP_AFTER_DEADLINE_S
    if pid == me.pid and abs(start - me.start_time) < 0.01:
        return False
    return not alive(pid, start)


def _stdin_line(run_id: str, request: Request, has_output: bool) -> bytes:
    body = {
        "run_id": run_id,
        "args": request.args,
        "inputs": {name: f"{INPUTS_DIR}/{name}" for name in sorted(request.inputs)},
        "output_dir": OUTPUT_DIR if has_output else None,
    }
    return json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8") + b"\n"


def _effective_limits(
    spec: ContainerSpec, loaded: LoadedPolicy, timeout_s: float
) -> dict[str, Any]:
    limits = loaded.policy.limits
    return {
        "timeout_s": timeout_s,
        "memory_mb": limits.memory_mb,
        "cpus": limits.cpus,
        "pids": limits.pids,
        "tmpfs_mb": limits.tmpfs_mb,
        "stdout_mb": limits.stdout_mb,
        "frame_kb": limits.frame_kb,
        "output_mb": loaded.policy.output.max_mb,
        "network": loaded.policy.network,
        "runtime": loaded.policy.runtime,
    }


# A SIGKILL we did not send, with the cgroup's memory high-water mark this close to the limit,
# is the OOM killer even when the engine's flag says otherwise.
OOM_PEAK_FRACTION = 0.9


def _killed_at_memory_limit(
    state: ExitState,
    reason: str | None,
    memory_peak_bytes: int | None,
    memory_mb: int,
    *,
    past_deadline: bool,
) -> bool:
    """gVisor can kill a task for memory inside the sandbox before the host cgroup's OOM killer
    acts; the engine then reports exit 137 without ``OOMKilled``. Seen from outside it is still
    the memory limit that ended the run."""
    if state.exit_code != 137 or reason is not None or past_deadline or memory_peak_bytes is None:
        return False
    return memory_peak_bytes >= OOM_PEAK_FRACTION * memory_mb * 1024 * 1024


def _classify(
    outcome: Outcome,
    state: ExitState,
    reason: str | None,
    spec: ContainerSpec,
    loaded: LoadedPolicy,
    *,
    past_deadline: bool,
    pids_limit_hits: int = 0,
    memory_peak_bytes: int | None = None,
) -> None:
    """Status from the engine's report and the watchdog's reason, never from the script.

    A tool that failed or hung after hitting its process limit failed *because* of the limit;
    one that coped with it and exited 0 is ok."""
    limits = loaded.policy.limits
    outcome.exit_code = state.exit_code
    outcome.oom_killed = state.oom_killed or _killed_at_memory_limit(
        state, reason, memory_peak_bytes, limits.memory_mb, past_deadline=past_deadline
    )
    if reason == "interrupted":
        outcome.fail(Interrupted("the run was interrupted; its container was removed"))
    elif reason == "stream":
        outcome.fail(
            ResourceLimit(
                f"the tool wrote more than {limits.stdout_mb} MiB to stdout/stderr",
                limit="stdout_mb",
            )
        )
    elif reason == "output":
        outcome.fail(
            ResourceLimit(
                f"the tool wrote more than {loaded.policy.output.max_mb} MiB (or "
                f"{staging.MAX_OUTPUT_ENTRIES} entries, or hid part of it from the count) "
                "to the output directory",
                limit="output.max_mb",
            )
        )
    elif outcome.oom_killed:
        outcome.fail(
            ResourceLimit(
                f"the tool ran out of memory (limit {limits.memory_mb} MiB)", limit="memory_mb"
            )
        )
    elif pids_limit_hits and (reason == "timeout" or state.exit_code != 0):
        outcome.fail(
            ResourceLimit(
                f"the tool hit its process limit ({limits.pids}) {pids_limit_hits} time(s) "
                "and failed",
                limit="pids",
            )
        )
    elif reason == "timeout":
        outcome.fail(
            Timeout(
                f"the run passed its {spec.timeout_s:g}s deadline and was killed", limit="timeout_s"
            )
        )
    elif state.exit_code == 137 and past_deadline:
        outcome.fail(Timeout("the run was killed at its in-container deadline"))
    elif state.exit_code != 0:
        outcome.fail(
            ToolError(f"the tool exited with status {state.exit_code}", exit_code=state.exit_code)
        )
