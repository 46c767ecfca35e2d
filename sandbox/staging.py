"""Inputs and outputs on the host: input paths resolved and checked against the allowed roots,
a fresh staging directory per run, and the publish step that lists, hashes and copies what the
script left into ``output_dir`` atomically, refusing anything that is not a regular file or
directory. Nothing here follows a link the script made.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InfrastructureError, InvalidRequest, PolicyDenied, ResourceLimit
from .log import logger
from .request import is_utf8, shown

STAGING_DIRNAME = ".sandbox-staging"
FAILED_DIRNAME = ".sandbox-failed"
MAX_OUTPUT_ENTRIES = 100_000
MAX_DEPTH = 64
# Well under PATH_MAX (4096) once the staging and publish directories are in front: a longer
# path could not be opened by name on the host, and publishing would fail half way.
MAX_PATH_BYTES = 1024
_COPY_CHUNK = 1024 * 1024
# A read-only bind mount does not stop connect() on a unix socket inside it.
DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock")


# --- inputs -----------------------------------------------------------------------------------


def _mount_points() -> list[str]:
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return []
    points = []
    for line in text.splitlines():
        parts = line.split(" ")
        if len(parts) > 4:
            points.append(parts[4].encode().decode("unicode_escape"))
    return points


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def resolve_input(name: str, raw: str, roots: tuple[Path, ...]) -> str:
    """The real path of one input, if it lies inside an allowed root and may be mounted."""
    if "\x00" in raw or not raw:
        msg = f"input {name!r}: path is empty or contains NUL"
        raise InvalidRequest(msg, key=name)
    real = os.path.realpath(raw)
    if not any(_inside(real, str(root)) for root in roots):
        allowed = ", ".join(str(r) for r in roots) or "none"
        msg = f"input {name!r}: {raw} is outside the allowed roots ({allowed})"
        raise PolicyDenied(
            msg,
            key=name,
            path=raw,
        )
    try:
        mode = Path(real).stat().st_mode
    except OSError as exc:
        msg = f"input {name!r}: {raw}: {exc.strerror}"
        raise InvalidRequest(msg, key=name) from exc
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        msg = f"input {name!r}: {raw} is not a regular file or directory"
        raise PolicyDenied(msg, key=name)
    if stat.S_ISDIR(mode):
        _refuse_unsafe_contents(name, real)
    return real


def _refuse_unsafe_contents(name: str, real: str) -> None:
    for point in _mount_points():
        if point != real and _inside(point, real):
            msg = (
                f"input {name!r}: {real} contains the mount point {point}, which the engine "
                "cannot make read-only; pass the directories beside it instead"
            )
            raise PolicyDenied(
                msg,
                key=name,
                path=point,
            )
    for sock in DOCKER_SOCKETS:
        if _inside(os.path.realpath(sock), real) and Path(sock).exists():
            msg = f"input {name!r}: {real} contains the Docker socket"
            raise PolicyDenied(msg, key=name)


def resolve_inputs(inputs: dict[str, str], roots: tuple[Path, ...]) -> dict[str, str]:
    return {name: resolve_input(name, raw, roots) for name, raw in inputs.items()}


# --- output staging ---------------------------------------------------------------------------


@dataclass
class OutputStaging:
    """One run's writable directory and where its contents go."""

    output_dir: Path
    staging: Path
    run_id: str

    @property
    def _root(self) -> Path:
        return self.output_dir.parent / STAGING_DIRNAME


def check_output_dir(raw: str) -> Path:
    """The output directory as an absolute path; it must not exist yet or be an empty dir."""
    if "\x00" in raw or not raw:
        msg = "output_dir is empty or contains NUL"
        raise InvalidRequest(msg, key="output_dir")
    path = Path(raw).absolute()
    if path.is_symlink():
        msg = f"output_dir {raw} is a symbolic link; outputs are never published through one"
        fix = "pass the real path of a new or empty directory (e.g. from `realpath`)"
        raise InvalidRequest(msg, key="output_dir", fix=fix)
    if path.exists() and not path.is_dir():
        msg = f"output_dir {raw} exists and is not a directory; nothing is ever overwritten"
        raise InvalidRequest(msg, key="output_dir", fix="pass a new or empty directory")
    if path.is_dir() and any(path.iterdir()):
        msg = f"output_dir {raw} is not empty; nothing is ever overwritten"
        raise InvalidRequest(
            msg,
            key="output_dir",
            fix="pass a new or empty directory",
        )
    ancestor = path.parent
    while not ancestor.exists() and not ancestor.is_symlink():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        msg = f"output_dir {raw}: {ancestor} is not a directory"
        raise InvalidRequest(msg, key="output_dir", fix="pass a path under a directory")
    return path


def _private_dir(path: Path) -> Path:
    """``path`` as a directory only this process's user can enter, created if missing.

    It sits beside the output directory, maybe in a directory others can write to (/tmp): one
    that someone else made, or a link, could let them read, swap or redirect what a run
    publishes (as root, into any directory). So it must be ours, real and private."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        msg = (
            f"{path} is not a private directory of this user (owner uid {st.st_uid}, mode "
            f"{stat.filemode(st.st_mode)}): another user could read or redirect the outputs"
        )
        raise InvalidRequest(
            msg,
            key="output_dir",
            fix=f"remove {path} if nobody else uses it, or choose an output_dir elsewhere",
        )
    return path


def prepare_output(output_dir: Path, run_id: str) -> OutputStaging:
    """A fresh staging directory beside output_dir (same filesystem, so publish can rename)."""
    root = output_dir.parent / STAGING_DIRNAME
    try:
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        _private_dir(root)
        staging = root / run_id
        staging.mkdir(mode=0o700)
        # The container's non-root user writes here; the 0700 parent keeps other host users out.
        staging.chmod(0o777)
    except OSError as exc:
        msg = f"cannot create the staging directory beside {output_dir}: {exc.strerror}"
        raise InfrastructureError(
            msg,
            path=str(output_dir),
        ) from exc
    return OutputStaging(output_dir=output_dir, staging=staging, run_id=run_id)


@dataclass(frozen=True)
class Usage:
    bytes: int
    entries: int
    # Why part of the tree could not be counted (its size is unknown), or None.
    unmeasured: str | None = None

    def over(self, max_bytes: int) -> bool:
        """Past the output limits, or hiding part of the tree from the count."""
        return (
            self.bytes > max_bytes
            or self.entries > MAX_OUTPUT_ENTRIES
            or self.unmeasured is not None
        )


# What hides a directory's contents from the count: a script could fill the disk below it.
_HIDING = {
    errno.ENAMETOOLONG: "paths longer than the host can open (PATH_MAX)",
    errno.EACCES: "a directory this user cannot list",
}


def measure(root: Path) -> Usage:
    """Bytes and entries under root, without following links (for the size watchdog).

    A directory nested past PATH_MAX, or one that this process may not list (a coordinator
    that is not root, a directory of the container's user made mode 0700), hides what is below
    it: the usage is then ``unmeasured``. An entry that vanishes while it is counted is
    skipped, not the rest of its directory."""
    total = entries = 0
    unmeasured: str | None = None
    stack = [str(root)]
    while stack and entries <= MAX_OUTPUT_ENTRIES and unmeasured is None:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    entries += 1
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError as exc:
                        unmeasured = _HIDING.get(exc.errno or 0)
                        if unmeasured is not None:
                            break
                        continue
                    total += st.st_blocks * 512 if st.st_blocks else st.st_size
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(entry.path)
        except OSError as exc:
            unmeasured = _HIDING.get(exc.errno or 0)
    return Usage(bytes=total, entries=entries, unmeasured=unmeasured)


# --- publishing -------------------------------------------------------------------------------


@dataclass
class Manifest:
    files: list[tuple[str, int]] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)


_REFUSED_KINDS = (
    (stat.S_ISLNK, "symbolic link"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


_TOO_DEEP = f"directory nested more than {MAX_DEPTH} levels deep"
_NOT_UTF8 = "name is not valid UTF-8"
_TOO_LONG = f"path longer than {MAX_PATH_BYTES} bytes"


def _readable(path: str, st: os.stat_result) -> bool:
    """Whether this process can copy a file the container's user made: under a coordinator
    that is not root, one created mode 0600 (``mkstemp``, an atomic write) cannot be, and the
    whole publish once failed on it. (A directory it cannot list never gets here: ``measure``
    counts it as hiding its contents.)"""
    return not stat.S_ISREG(st.st_mode) or os.access(path, os.R_OK)


def _walk(
    root: Path, rel: str = "", depth: int = 0
) -> Iterator[tuple[str, os.stat_result, str | None]]:
    """Every entry under root as (path, lstat, why it is refused or None), parents first. A
    refused directory is not entered."""
    with os.scandir(root / rel if rel else root) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        path = f"{rel}/{entry.name}" if rel else entry.name
        st = entry.stat(follow_symlinks=False)
        if not is_utf8(entry.name):
            # Frames and the audit log are UTF-8: such a name could only be listed altered.
            yield shown(path), st, _NOT_UTF8
        elif stat.S_ISDIR(st.st_mode) and depth >= MAX_DEPTH:
            yield path, st, _TOO_DEEP
        elif len(path.encode()) > MAX_PATH_BYTES:
            yield path, st, _TOO_LONG
        elif not _readable(entry.path, st):
            yield path, st, f"not readable by this user (mode {stat.filemode(st.st_mode)})"
        else:
            yield path, st, None
            if stat.S_ISDIR(st.st_mode):
                yield from _walk(root, path, depth + 1)


def survey(root: Path) -> Manifest:
    """What the script left: publishable files and dirs, and the refused entries with why."""
    manifest = Manifest()
    seen_inodes: dict[int, int] = {}
    regular: list[tuple[str, os.stat_result]] = []
    for path, st, why in _walk(root):
        if why is not None:
            manifest.refused.append({"path": path, "reason": why})
        elif stat.S_ISDIR(st.st_mode):
            manifest.dirs.append(path)
        elif stat.S_ISREG(st.st_mode):
            regular.append((path, st))
            seen_inodes[st.st_ino] = seen_inodes.get(st.st_ino, 0) + 1
        else:
            reason = next(r for check, r in _REFUSED_KINDS if check(st.st_mode))
            manifest.refused.append({"path": path, "reason": reason})
    for path, st in regular:
        if st.st_nlink > seen_inodes[st.st_ino]:
            manifest.refused.append(
                {"path": path, "reason": "hard link to a file outside the output directory"}
            )
        else:
            manifest.files.append((path, st.st_size))
    manifest.refused.sort(key=lambda r: r["path"])
    return manifest


def _copy_hashing(src: Path, dst: Path, executable: bool) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as reader, dst.open("xb") as writer:
        while chunk := reader.read(_COPY_CHUNK):
            digest.update(chunk)
            writer.write(chunk)
            size += len(chunk)
    dst.chmod(0o755 if executable else 0o644)
    return size, digest.hexdigest()


def _copy_tree(stage: OutputStaging, manifest: Manifest, fresh: Path) -> list[dict[str, object]]:
    outputs: list[dict[str, object]] = []
    for rel in manifest.dirs:
        (fresh / rel).mkdir(mode=0o755)
    refused_paths = {r["path"] for r in manifest.refused}
    for rel, _ in manifest.files:
        # A set lookup per ancestor, not a scan of every refused path per file: a script can
        # leave 100,000 entries, and that scan was quadratic.
        parents = rel.split("/")[:-1]
        if any("/".join(parents[: i + 1]) in refused_paths for i in range(len(parents))):
            continue
        src_mode = os.lstat(stage.staging / rel).st_mode
        size, sha = _copy_hashing(stage.staging / rel, fresh / rel, bool(src_mode & 0o111))
        outputs.append({"path": rel, "bytes": size, "sha256": sha})
    fresh.chmod(0o755)
    return outputs


def listing_bytes(manifest: Manifest) -> int:
    """How many bytes the exit frame's ``outputs`` and ``refused`` lists take, encoded as frames
    are (a file's sha256 is always 64 hex digits)."""
    outputs = [{"path": rel, "bytes": size, "sha256": "0" * 64} for rel, size in manifest.files]
    text = json.dumps([outputs, manifest.refused], ensure_ascii=False, separators=(",", ":"))
    return len(text.encode("utf-8", "replace"))


def publish(
    stage: OutputStaging, max_bytes: int, *, max_listing_bytes: int
) -> tuple[list[dict[str, object]], list[dict[str, str]]]:
    """Copy the survey's files into output_dir atomically; return (outputs, refused).

    Copies rather than renames so that every published file is a new inode owned by the
    invoking user, with no setuid bits and no link back into the staging tree. Refused (nothing
    published) when the outputs are over ``max_bytes``, or too many to list in the exit frame:
    its lists may take ``max_listing_bytes``, so that it stays within the frame line limit.
    """
    hidden = measure(stage.staging).unmeasured
    if hidden is not None:
        # As the watchdog would have said had it looked: what lies below is unknown.
        msg = f"the output directory holds {hidden}, hiding how much was written"
        raise ResourceLimit(msg, limit="output.max_mb")
    manifest = survey(stage.staging)
    total = sum(size for _, size in manifest.files)
    if total > max_bytes:
        msg = f"outputs total {total} bytes, over the policy's {max_bytes}"
        raise ResourceLimit(msg, limit="output.max_mb")
    listing = listing_bytes(manifest)
    if listing > max_listing_bytes:
        msg = (
            f"{len(manifest.files)} files and {len(manifest.refused)} refused entries take "
            f"{listing} bytes to list, over the {max_listing_bytes} bytes the exit frame has "
            "room for under the frame line limit (limits.frame_kb); write fewer, larger files "
            "(an archive, say)"
        )
        raise ResourceLimit(msg, limit="frame_kb")
    fresh = stage.staging.parent / f"{stage.run_id}.publish"
    fresh.mkdir(mode=0o755)
    try:
        outputs = _copy_tree(stage, manifest, fresh)
        if stage.output_dir.is_dir():
            stage.output_dir.rmdir()  # empty, checked before the run (ENOTEMPTY if no longer)
        fresh.rename(stage.output_dir)
    except BaseException:
        # E.g. ENOSPC half way, or output_dir filled by someone else meanwhile: never leave a
        # published copy behind beside it (the staging tree itself is set aside by the caller,
        # intact).
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    try:
        discard(stage)
    except OSError as exc:
        # Published already: what is left is the script's copy, e.g. directories its user made
        # that a non-root coordinator may not empty. Worth a warning, not a failed run.
        logger.warning("staging directory {} not removed: {}", stage.staging, exc)
    return outputs, manifest.refused


def set_aside(stage: OutputStaging) -> Path | None:
    """Move a failed run's partial outputs to ``.sandbox-failed/RUN_ID``; None if it was empty."""
    if not stage.staging.exists():
        return None
    if not any(stage.staging.iterdir()):
        discard(stage)
        return None
    failed_root = _private_dir(stage.output_dir.parent / FAILED_DIRNAME)
    target = failed_root / stage.run_id
    stage.staging.rename(target)
    target.chmod(0o700)
    _remove_if_empty(stage.staging.parent)
    return target


def discard(stage: OutputStaging) -> None:
    """Remove the staging tree (rmtree never follows symlinks)."""
    if stage.staging.exists():
        shutil.rmtree(stage.staging)
    leftover = stage.staging.parent / f"{stage.run_id}.publish"
    if leftover.exists():
        shutil.rmtree(leftover)
    _remove_if_empty(stage.staging.parent)


def _remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:
        return
