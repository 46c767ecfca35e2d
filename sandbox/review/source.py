"""Policy sets to review, read from a directory or from a git revision (``git:REF[:PATH]``).

The only module of the package that reads files or runs git; the rest works on the bytes.
git runs with fixed argv lists (no shell) and the ref is checked before it reaches git.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import InfrastructureError, PolicyFileError
from ..policy import LoadedPolicy, parse_policy, policy_files, read_policy_bytes
from .baseline import BASELINE_FILE, BUILTIN_BASELINE, Baseline, parse_baseline

GIT_PREFIX = "git:"
GIT_TIMEOUT_S = 60


@dataclass(frozen=True)
class PolicySource:
    """One file's bytes and the path it is known by (shown in findings; relative input roots
    resolve from its directory)."""

    path: Path
    text: bytes


@dataclass(frozen=True)
class PolicySet:
    """The tool policies of one directory or revision, and its baseline file if it has one."""

    label: str
    policies: tuple[PolicySource, ...]
    baseline: PolicySource | None


@dataclass(frozen=True)
class GitLocation:
    """``git:REF[:PATH]``: the policy directory PATH as committed at REF."""

    ref: str
    path: str


# --- parsing sources --------------------------------------------------------------------------


def load(source: PolicySource) -> LoadedPolicy:
    """Parse one policy source; PolicyFileError (naming file, line and key) when it is bad."""
    return parse_policy(source.text, source.path)


def load_baseline(source: PolicySource | None) -> Baseline:
    """The set's baseline, or the built-in one when the set has none."""
    if source is None:
        return BUILTIN_BASELINE
    return parse_baseline(source.text, source.path)


def load_all(policy_set: PolicySet) -> dict[str, LoadedPolicy]:
    """Every policy of the set by tool name; the first bad file raises PolicyFileError."""
    return {lp.policy.tool: lp for lp in map(load, policy_set.policies)}


# --- directories ------------------------------------------------------------------------------


def read_source(path: Path) -> PolicySource:
    """One file's bytes (PolicyFileError when it cannot be read)."""
    return PolicySource(path, read_policy_bytes(path))


def read_dir(directory: Path, label: str | None = None) -> PolicySet:
    """The policy files of a directory (PolicyFileError when it does not exist)."""
    policies = tuple(map(read_source, policy_files(directory)))
    baseline_path = directory / BASELINE_FILE
    baseline = read_source(baseline_path) if baseline_path.is_file() else None
    return PolicySet(label=label or str(directory), policies=policies, baseline=baseline)


# --- git revisions ----------------------------------------------------------------------------


def parse_location(text: str, default_path: Path) -> Path | GitLocation:
    """A directory, or ``git:REF`` (the default policy path at REF) or ``git:REF:PATH``."""
    if not text.startswith(GIT_PREFIX):
        return Path(text)
    ref, _, path = text[len(GIT_PREFIX) :].partition(":")
    # A ref starting with '-' would reach git as an option.
    if not ref or ref.startswith("-"):
        msg = f"{text!r}: expected git:REF or git:REF:PATH"
        raise PolicyFileError(msg, path=text)
    return GitLocation(ref=ref, path=path or str(default_path))


def read_location(text: str, default_path: Path, cwd: Path, *, required: bool = False) -> PolicySet:
    """The policy set a command-line location names (directory or git revision); relative
    paths are relative to ``cwd``; the set is labelled with ``text`` as given. A path absent
    at a revision is no policies (a base before the policies existed) unless ``required``."""
    location = parse_location(text, default_path)
    if isinstance(location, Path):
        return read_dir(cwd / location, label=text)
    return read_git(location, cwd, required=required)


def _git(args: list[str], cwd: Path, label: str, stdin: bytes | None = None) -> bytes:
    git = shutil.which("git")
    if git is None:
        msg = "git is not installed"
        raise InfrastructureError(msg, fix="install git, or compare two directories")
    try:
        proc = subprocess.run(  # noqa: S603 - fixed argv, no shell; the ref was checked
            [git, "-C", str(cwd), *args],
            input=stdin,
            capture_output=True,
            check=False,
            timeout=GIT_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        msg = f"git {args[0]} did not finish in {GIT_TIMEOUT_S}s"
        raise InfrastructureError(msg, path=label) from exc
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip() or f"exit {proc.returncode}"
        msg = f"git {args[0]} failed: {detail}"
        raise PolicyFileError(msg, path=label)
    return proc.stdout


def _repo_relative(path: str, cwd: Path, toplevel: Path) -> str:
    """PATH (relative to the working directory, or absolute) as a path inside the repo."""
    absolute = (cwd / path).resolve()
    try:
        relative = absolute.relative_to(toplevel.resolve())
    except ValueError:
        msg = f"{path} is outside the git repository at {toplevel}"
        raise PolicyFileError(msg, path=path) from None
    return relative.as_posix()


def _resolve_commit(ref: str, cwd: Path, label: str) -> str:
    try:
        out = _git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd, label)
        return out.decode().strip()
    except PolicyFileError:
        msg = f"unknown git revision {ref!r}"
        raise PolicyFileError(msg, path=label) from None


def read_git(location: GitLocation, cwd: Path, *, required: bool = False) -> PolicySet:
    """The policy files of a directory as committed at a git revision; PolicyFileError if
    ``required`` and the directory is not there."""
    label = f"{GIT_PREFIX}{location.ref}:{location.path}"
    toplevel = Path(_git(["rev-parse", "--show-toplevel"], cwd, label).decode().strip())
    commit = _resolve_commit(location.ref, cwd, label)
    relative = _repo_relative(location.path, cwd, toplevel)
    label = f"{GIT_PREFIX}{location.ref}:{relative}"
    prefix = "" if relative == "." else f"{relative}/"
    listing = _git(["ls-tree", "-z", commit, "--", prefix or "."], toplevel, label)
    if required and not listing:
        # A mistyped path on the side under review would read as every tool removed.
        msg = f"no directory {relative!r} at {location.ref} ({commit[:12]})"
        raise PolicyFileError(msg, path=label)
    policies: list[PolicySource] = []
    baseline: PolicySource | None = None
    for name, blob, link in _yaml_blobs(listing):
        path = Path(f"{GIT_PREFIX}{location.ref}:{prefix}{name}")
        if link:
            text = _link_target_blob(f"{commit}:{prefix}{name}", toplevel, path)
        else:
            text = _git(["cat-file", "blob", blob], toplevel, label)
        source = PolicySource(path, text)
        if name == BASELINE_FILE:
            baseline = source
        else:
            policies.append(source)
    return PolicySet(label=label, policies=tuple(policies), baseline=baseline)


def _link_target_blob(spec: str, toplevel: Path, path: Path) -> bytes:
    """The bytes of the file a committed symlink (``REV:PATH``) points to, as the loader would
    read through it in a checkout; PolicyFileError when it leaves the revision or dangles."""
    out = _git(["cat-file", "--batch", "--follow-symlinks"], toplevel, str(path), spec.encode())
    header, _, rest = out.partition(b"\n")
    parts = header.split()
    if len(parts) == 3 and parts[1] == b"blob":
        return rest[: int(parts[2])]
    kind, target = header.decode(errors="replace"), rest.decode(errors="replace").strip()
    msg = f"a symlink git cannot follow inside the revision ({kind.split()[0]}: {target})"
    raise PolicyFileError(msg, path=str(path))


def _yaml_blobs(listing: bytes) -> list[tuple[str, str, bool]]:
    """(file name, blob id, is a symlink) of the ``*.yaml`` files in ``git ls-tree -z`` output.
    A symlink (mode 120000) is listed too: a checkout's loader follows it."""
    blobs = []
    for entry in listing.decode().split("\0"):
        meta, _, path = entry.partition("\t")
        parts = meta.split()
        # Sub-trees are not policies.
        if len(parts) == 3 and parts[1] == "blob" and parts[0] in {"100644", "100755", "120000"}:
            name = path.rsplit("/", 1)[-1]
            if name.endswith(".yaml"):
                blobs.append((name, parts[2], parts[0] == "120000"))
    return sorted(blobs)
