"""The audit log: one JSON line per run, appended with fsync and hash-chained, so that editing,
deleting or reordering a line is detected by ``verify``. Fail closed: a log that cannot be
written refuses the run before any container exists.

Layout: ``audit.jsonl`` holds the records; each record's ``prev`` is the sha256 of the previous
line's bytes (``GENESIS`` for the first) and ``seq`` its 0-based line number. A small sidecar,
``audit.jsonl.head``, names the line count and the last line's hash after every append, so that
cutting lines off the *end* (which a chain alone cannot show) is detected too. Someone who can
rewrite both files can forge a consistent history; shipping lines off the host is the remedy for
that and is out of scope here (docs/security.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InfrastructureError

GENESIS = "0" * 64
ENV_VAR = "SANDBOX_AUDIT_LOG"
RECORD_VERSION = 1
# A line longer than this is not ours (records are a few KiB); verify refuses to buffer more.
MAX_LINE_BYTES = 1024 * 1024
PEAK_MEMORY_UNMEASURED = (
    "not measured: the engine drops the container's cgroup (and its peak usage) when it exits, "
    "and Docker 20.10 reports no peak in inspect"
)


def default_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$SANDBOX_AUDIT_LOG``, else ``$XDG_STATE_HOME/sandbox/audit.jsonl``, else
    ``~/.local/state/sandbox/audit.jsonl``."""
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR):
        return Path(env[ENV_VAR]).expanduser()
    state = env.get("XDG_STATE_HOME") or str(Path("~/.local/state").expanduser())
    return Path(state) / "sandbox" / "audit.jsonl"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_digest(value: Any) -> str:
    """sha256 of the canonical JSON of ``value`` (sorted keys, no spaces)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return sha256_hex(text.encode())


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Caller(_Model):
    """Who asked for the run."""

    uid: int
    """Real uid of the coordinator process."""
    pid: int
    """The coordinator's pid."""
    ppid: int
    """Its parent's pid (the caller: a shell, Node.js, CI)."""
    parent: str | None
    """The parent's command name, when readable."""


class Mount(_Model):
    """One bind mount of the run's container."""

    source: str
    """Resolved real host path."""
    target: str
    """Path inside the container."""
    read_only: bool
    """Inputs are read-only; only the staging directory is writable."""


class AuditRecord(_Model):
    """One run, as the audit log keeps it. Environment values are never recorded, only keys."""

    v: int = RECORD_VERSION
    """Record format version."""
    seq: int = Field(ge=0)
    """0-based line number; makes deletion and reordering visible at a glance."""
    prev: str = Field(pattern=r"^[0-9a-f]{64}$")
    """sha256 of the previous line's bytes (``GENESIS`` for the first line)."""
    ts: str
    """When the run ended (RFC 3339, UTC)."""
    run_id: str
    """The run's id, as in its frames."""
    request_sha256: str | None
    """sha256 of the request's canonical JSON (null when the request did not parse)."""
    tool: str | None
    """The requested tool."""
    caller: Caller
    """The process that asked."""
    policy_sha256: str | None
    """sha256 of the policy file's bytes, when one was found."""
    image: str | None
    """Image name from the policy."""
    image_id: str | None
    """The pinned image id the container ran."""
    runtime: str | None
    """runc or runsc."""
    limits: dict[str, Any] | None
    """The effective limits (as in the accepted frame)."""
    mounts: list[Mount]
    """Bind mounts of the container (empty when none was made)."""
    env_keys: list[str]
    """Names of the container's environment variables; values are never recorded."""
    container_created: bool
    """Whether a container was created for the run."""
    status: str
    """The exit frame's status."""
    exit_code: int | None
    """The container's exit code, null if none ran."""
    oom_killed: bool
    """Whether the kernel's OOM killer ended the container."""
    duration_s: float
    """Wall time of the run in the coordinator."""
    peak_memory_bytes: int | None
    """Peak memory of the container, when measurable."""
    peak_memory_note: str | None
    """Why ``peak_memory_bytes`` is null."""
    outputs_sha256: str | None
    """sha256 of the canonical JSON of the exit frame's ``outputs`` and ``refused``."""
    outputs_count: int
    """How many files were published."""
    error_kind: str | None
    """The error kind when the run failed."""


@dataclass(frozen=True)
class RunFacts:
    """What the coordinator knows about one finished run, handed to ``AuditLog.record``."""

    run_id: str
    request: dict[str, Any] | None
    tool: str | None
    policy_sha256: str | None
    image: str | None
    image_id: str | None
    runtime: str | None
    limits: dict[str, Any] | None
    mounts: tuple[tuple[str, str, bool], ...]
    env_keys: tuple[str, ...]
    container_created: bool
    exit_frame: dict[str, Any]
    error_kind: str | None


def caller_info(parent_name: str | None) -> Caller:
    return Caller(uid=os.getuid(), pid=os.getpid(), ppid=os.getppid(), parent=parent_name)


class AuditLog:
    """Appends records to one JSONL file (thread- and process-safe, fsync'd)."""

    def __init__(self, path: Path, caller: Caller | None = None) -> None:
        self.path = path
        self.head_path = path.with_name(path.name + ".head")
        self._caller = caller or caller_info(None)
        self._lock = threading.Lock()

    # --- writing ---------------------------------------------------------------------------

    def check(self) -> None:
        """Raise InfrastructureError unless a record could be appended now (fail closed)."""
        try:
            self._ensure_dir()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.close(fd)
            if self.head_path.exists() and not os.access(self.head_path, os.W_OK):
                raise PermissionError(13, "not writable", str(self.head_path))  # noqa: TRY301
        except OSError as exc:
            raise self._unwritable(exc) from exc

    def record(self, facts: RunFacts) -> AuditRecord:
        """Append one run's record; raise InfrastructureError if it cannot be written."""
        try:
            with self._lock, self._locked_file() as fh:
                prev, seq = _tail(fh, self.head_path)
                record = self._build(facts, prev, seq)
                line = record.model_dump_json().encode() + b"\n"
                fh.seek(0, os.SEEK_END)
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
                self._write_head(seq + 1, sha256_hex(line))
        except OSError as exc:
            raise self._unwritable(exc) from exc
        return record

    def _build(self, facts: RunFacts, prev: str, seq: int) -> AuditRecord:
        exit_frame = facts.exit_frame
        outputs = exit_frame.get("outputs") or []
        manifest = {"outputs": outputs, "refused": exit_frame.get("refused") or []}
        return AuditRecord(
            seq=seq,
            prev=prev,
            ts=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            run_id=facts.run_id,
            request_sha256=canonical_digest(facts.request) if facts.request is not None else None,
            tool=facts.tool,
            caller=self._caller,
            policy_sha256=facts.policy_sha256,
            image=facts.image,
            image_id=facts.image_id,
            runtime=facts.runtime,
            limits=facts.limits,
            mounts=[Mount(source=s, target=t, read_only=ro) for s, t, ro in facts.mounts],
            env_keys=sorted(facts.env_keys),
            container_created=facts.container_created,
            status=str(exit_frame.get("status")),
            exit_code=exit_frame.get("exit_code"),
            oom_killed=bool(exit_frame.get("oom_killed")),
            duration_s=float(exit_frame.get("duration_s") or 0.0),
            peak_memory_bytes=None,
            peak_memory_note=PEAK_MEMORY_UNMEASURED if facts.container_created else None,
            outputs_sha256=canonical_digest(manifest) if facts.container_created else None,
            outputs_count=len(outputs),
            error_kind=facts.error_kind,
        )

    def _ensure_dir(self) -> None:
        directory = self.path.parent
        if not directory.is_dir():
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _locked_file(self) -> Iterator[Any]:
        self._ensure_dir()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "r+b") as fh:
            # Another coordinator (serve, a parallel CLI) may append at the same moment.
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield fh
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _write_head(self, lines: int, last: str) -> None:
        """Replace the head atomically. Not fsync'd: the log line it describes is, and a head
        lost or torn by a crash only sends the next append to counting lines (``_tail``)."""
        tmp = self.head_path.with_name(self.head_path.name + ".tmp")
        data = json.dumps({"lines": lines, "last_sha256": last}).encode() + b"\n"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        tmp.replace(self.head_path)

    def _unwritable(self, exc: OSError) -> InfrastructureError:
        msg = (
            f"the audit log {self.path} cannot be written ({exc.strerror or exc}); runs are refused"
        )
        return InfrastructureError(
            msg,
            fix=f"make {self.path.parent} writable, or point --audit-log / {ENV_VAR} at a "
            "writable file",
            path=str(self.path),
        )


def _tail(fh: Any, head_path: Path) -> tuple[str, int]:
    """(sha256 of the last line, number of lines) of an open log.

    The head file names both; it is trusted only when the log's actual last line hashes to
    what it says, so an append costs one short read from the end, not a read of the whole log
    (which grows by a line per run). A head that is missing or behind (a crash between append
    and head update) sends us to counting every line."""
    last = _last_line(fh)
    if last and not last.endswith(b"\n"):
        # A torn write (crash mid-append) must not be silently extended: refuse to chain on it.
        msg = "the audit log's last line is incomplete; run `sandbox audit verify`"
        raise OSError(5, msg)
    if not last:
        return GENESIS, 0
    digest = sha256_hex(last)
    head = _read_head(head_path)
    if head is not None and head[1] == digest and head[0] > 0:
        return digest, head[0]
    return digest, _count_lines(fh)


def _last_line(fh: Any, block: int = 64 * 1024) -> bytes:
    """The file's last line (with its newline, if it has one), read backwards from the end."""
    end = fh.seek(0, os.SEEK_END)
    data: bytes = b""
    pos = end
    while pos > 0:
        step = min(block, pos)
        pos -= step
        fh.seek(pos)
        data = fh.read(step) + data
        cut = data.rfind(b"\n", 0, len(data) - 1)
        if cut >= 0:
            return data[cut + 1 :]
    return data


def _count_lines(fh: Any) -> int:
    fh.seek(0)
    return sum(1 for _ in fh)


def _read_head(head_path: Path) -> tuple[int, str] | None:
    try:
        head = json.loads(head_path.read_bytes())
        return int(head["lines"]), str(head["last_sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --- reading and verifying --------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    line: int  # 1-based
    message: str


@dataclass(frozen=True)
class Verification:
    path: Path
    lines: int
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while line := fh.readline(MAX_LINE_BYTES + 1):
            yield line


def verify(path: Path) -> Verification:
    """Check every line: valid record, ``seq`` in order, ``prev`` chained; and the head file."""
    problems: list[Problem] = []
    prev = GENESIS
    count = 0
    if not path.exists():
        return Verification(path, 0, (Problem(0, f"{path} does not exist"),))
    for number, line in enumerate(_lines(path), start=1):
        count = number
        problems.extend(_check_line(number, line, prev))
        prev = sha256_hex(line)
        if len(problems) >= 20:
            break
    problems.extend(_check_head(path, count, prev))
    return Verification(path, count, tuple(problems))


def _check_line(number: int, line: bytes, prev: str) -> list[Problem]:
    if not line.endswith(b"\n"):
        return [Problem(number, "incomplete last line (torn write or truncation)")]
    try:
        record = AuditRecord.model_validate_json(line)
    except ValidationError as exc:
        return [Problem(number, f"not a valid audit record: {exc.errors()[0]['msg']}")]
    found = []
    if record.seq != number - 1:
        found.append(
            Problem(
                number, f"seq is {record.seq}, expected {number - 1} (lines deleted or reordered)"
            )
        )
    if record.prev != prev:
        found.append(
            Problem(number, "prev does not match the previous line (edited, deleted or reordered)")
        )
    return found


def _check_head(path: Path, count: int, last: str) -> list[Problem]:
    head_path = path.with_name(path.name + ".head")
    try:
        head = json.loads(head_path.read_text())
        lines, head_last = int(head["lines"]), str(head["last_sha256"])
    except FileNotFoundError:
        return [] if count == 0 else [Problem(count, f"{head_path.name} is missing")]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [Problem(count, f"{head_path.name} is unreadable: {exc}")]
    if lines > count:
        return [
            Problem(
                count,
                f"the log has {count} lines but {head_path.name} recorded {lines}: "
                "lines were cut off the end",
            )
        ]
    if lines == count and head_last != last:
        return [
            Problem(
                count, f"the last line does not match {head_path.name}: it was edited or replaced"
            )
        ]
    if lines < count:
        # A crash between append and head update leaves the head behind; the chain still holds,
        # so only check that the line the head names is the one at that position.
        nth = _line_hash(path, lines)
        if nth != head_last:
            return [Problem(lines, f"line {lines} does not match {head_path.name}")]
    return []


def _line_hash(path: Path, number: int) -> str:
    if number == 0:
        return GENESIS
    for index, line in enumerate(_lines(path), start=1):
        if index == number:
            return sha256_hex(line)
    return GENESIS


def tail(path: Path, n: int) -> list[dict[str, Any]]:
    """The last ``n`` records as dicts (unparseable lines are skipped; verify reports them)."""
    window: deque[bytes] = deque(_lines(path), maxlen=max(n, 0))
    records = []
    for line in window:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records
