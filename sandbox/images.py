"""Build, pin and expose the project's images: ``build`` (base, then each policy's image, with
the docker SDK's streaming low-level build), ``lock`` (rewrite each policy's ``image.id`` with a
minimal textual edit), and ``DockerImageSource`` (the engine side of ``sandbox.scan``). With
``docker_runtime`` the only module that imports docker.

Build conventions shared with compose.yaml (scripts/build-image.sh calls this module): context
= repository root (``.dockerignore`` applies), ``images/NAME/Dockerfile`` -> the policy's
``image.name`` (``sandbox/NAME``, ``:latest`` when untagged), tool images get
``BASE=sandbox/base:latest``, host networking (the engine's default bridge is off here), and
the host CA bundle copied to ``images/.build/ca-bundle.pem`` for builder stages.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import docker
import docker.errors
import requests.exceptions

from .docker_runtime import (
    ENGINE_FIX,
    is_not_found,
    missing_image,
    refused,
    short_name,
    unreachable,
)
from .errors import InfrastructureError, InvalidRequest, PolicyFileError, SandboxError
from .policy import LoadedPolicy, parse_policy, read_policy

BASE = "base"
BASE_IMAGE = "sandbox/base:latest"
ROOTFS_IMAGE = "sandbox/debian-rootfs:bookworm"
CA_ENV = ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
CA_TARGET = Path("images/.build/ca-bundle.pem")
LABEL_REVISION = "org.opencontainers.image.revision"
LABEL_LOCK = "io.sandbox.lock-sha256"
LABEL_SCAN = "io.sandbox.scan"
BUILD_TIMEOUT_S = 3600
_STEP_RE = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_BUILT_RE = re.compile(r"^Successfully built ([0-9a-f]{12,64})$")

Event = dict[str, Any]
EventSink = Callable[[Event], None]


@contextmanager
def translated(action: str) -> Iterator[None]:
    """Turn docker SDK / requests errors raised by ``action`` into InfrastructureError."""
    try:
        yield
    except SandboxError:
        raise
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise unreachable(action, exc) from exc
    except docker.errors.APIError as exc:
        raise refused(action, exc.explanation or exc, exc.status_code) from exc
    except docker.errors.DockerException as exc:
        msg = f"Docker failed to {action}: {exc}"
        raise InfrastructureError(msg, fix=ENGINE_FIX) from exc


# --- where things are -------------------------------------------------------------------------


def repo_root() -> Path:
    """The checkout: the working directory when it holds images/, else the package's parent."""
    for candidate in (Path.cwd(), Path(__file__).resolve().parent.parent):
        if (candidate / "images" / "base" / "Dockerfile").is_file():
            return candidate
    msg = "cannot find the repository (images/base/Dockerfile): run from the checkout"
    raise InvalidRequest(msg, fix="cd to the repository root")


def tagged(image: str) -> str:
    last = image.rsplit("/", 1)[-1]
    return image if ":" in last or "@" in image else f"{image}:latest"


@dataclass(frozen=True)
class ImagePlan:
    """One image to build."""

    name: str
    """Directory name under images/ (``dbt``)."""
    tag: str
    """``sandbox/dbt:latest``."""
    tools: tuple[str, ...] = ()
    """Policies that run it."""
    base: str = BASE_IMAGE
    """What tool images start FROM (the ``BASE`` build argument)."""

    @property
    def dockerfile(self) -> str:
        return f"images/{self.name}/Dockerfile"

    @property
    def buildargs(self) -> dict[str, str]:
        return {} if self.name == BASE else {"BASE": self.base}


def plan_images(
    policies: Mapping[str, LoadedPolicy],
    selected: Sequence[str],
    root: Path,
    prefix: str | None = None,
) -> list[ImagePlan]:
    """Base first, then each policy image once; ``selected`` filters by tool or image name.
    Each image is tagged with its policies' ``image.name`` (what ``lock``, ``doctor`` and runs
    look up); ``prefix`` instead names a side set ``PREFIX/NAME:latest``, e.g. for tests,
    without touching the pinned tags."""
    by_name: dict[str, list[str]] = {}
    tags: dict[str, str] = {}
    for tool, loaded in sorted(policies.items()):
        name = short_name(loaded.policy.image.name)
        by_name.setdefault(name, []).append(tool)
        tag = tagged(loaded.policy.image.name) if prefix is None else f"{prefix}{name}:latest"
        if tags.setdefault(name, tag) != tag:
            msg = (
                f"images/{name}/Dockerfile is built as one image, but the policies of "
                f"{', '.join(by_name[name])} name it {tags[name]} and {tag}: use one name"
            )
            raise InvalidRequest(msg, path=f"images/{name}/Dockerfile")
    base = BASE_IMAGE if prefix is None else f"{prefix}{BASE}:latest"
    plans = [ImagePlan(BASE, base, (), base)]
    plans += [ImagePlan(n, tags[n], tuple(t), base) for n, t in sorted(by_name.items())]
    for plan in plans:
        if not (root / plan.dockerfile).is_file():
            msg = f"{plan.dockerfile} not found (image {plan.tag} of {', '.join(plan.tools)})"
            raise InvalidRequest(msg, path=plan.dockerfile)
    if not selected:
        return plans
    known = {p.name for p in plans} | {t for p in plans for t in p.tools}
    unknown = sorted(set(selected) - known)
    if unknown:
        msg = f"unknown tool or image {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        raise InvalidRequest(msg)
    wanted = [p for p in plans if p.name in selected or set(p.tools) & set(selected)]
    return [plans[0], *[p for p in wanted if p.name != BASE]]


# --- labels -----------------------------------------------------------------------------------


def _git(root: Path, *args: str) -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    proc = subprocess.run(  # noqa: S603 - fixed read-only git query
        [git, "-C", str(root), *args], capture_output=True, text=True, check=False, timeout=30
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def source_paths(name: str) -> tuple[str, ...]:
    """What an image is built from (besides its parent image)."""
    return (f"images/{name}", "sandbox/runtime_lib") if name == "base" else (f"images/{name}",)


def revision(root: Path, name: str | None = None) -> str:
    """The last commit that changed an image's sources (``-dirty`` with local changes).

    Per image, not HEAD: a label that changed with every commit would give ``sandbox/base`` a
    new id on every commit and void the layer cache of every image built FROM it.
    """
    paths = source_paths(name) if name else ("images", "sandbox/runtime_lib")
    # Sources no commit has touched yet (a new tool's directory): HEAD, marked dirty below.
    head = _git(root, "log", "-1", "--format=%H", "--", *paths) or _git(root, "rev-parse", "HEAD")
    if not head:
        return "unknown"
    changes = _git(root, "status", "--porcelain", "--", *paths)
    return f"{head}-dirty" if changes else head


def lock_digest(root: Path, name: str) -> str | None:
    """One digest over every lock file of the image (pyairbyte has one per venv)."""
    locks = sorted((root / "images" / name).glob("*.lock"))
    if not locks:
        return None
    digest = hashlib.sha256()
    for lock in locks:
        digest.update(lock.name.encode() + b"\0" + lock.read_bytes())
    return digest.hexdigest()


def image_labels(root: Path, name: str, rev: str) -> dict[str, str]:
    labels = {LABEL_REVISION: rev}
    digest = lock_digest(root, name)
    if digest:
        labels[LABEL_LOCK] = digest
    return labels


def compose_env(root: Path, names: Sequence[str]) -> dict[str, str]:
    """The variables compose.yaml reads so ``docker compose build`` labels images the same."""
    env = {}
    for name in names:
        env[f"SANDBOX_REVISION_{name.upper()}"] = revision(root, name)
        env[f"SANDBOX_LOCK_{name.upper()}"] = lock_digest(root, name) or ""
    return env


def prepare_ca_bundle(root: Path, environ: Mapping[str, str] = os.environ) -> Path | None:
    """Copy the host CA bundle where builder stages COPY it from (empty file if none), as
    the Dockerfiles expect. Returns the source used."""
    target = root / CA_TARGET
    target.parent.mkdir(parents=True, exist_ok=True)
    for var in CA_ENV:
        candidate = environ.get(var, "")
        if candidate and Path(candidate).is_file():
            shutil.copyfile(candidate, target)
            return Path(candidate)
    target.write_bytes(b"")
    return None


# --- the engine -------------------------------------------------------------------------------


def connect(timeout_s: int = 120) -> docker.APIClient:
    with translated("connect"):
        client = docker.from_env(version="auto", timeout=timeout_s)
        client.ping()
        return client.api


def _inspect(api: docker.APIClient, ref: str) -> dict[str, Any]:
    # The SDK's inspect_image is untyped; its answer is the engine's JSON object.
    return dict(cast(Any, api).inspect_image(ref))


def image_id(api: docker.APIClient, ref: str) -> str | None:
    """The local image id of ``ref``, or None when the engine has no such image."""
    try:
        with translated(f"inspect image {ref}"):
            return str(_inspect(api, ref)["Id"])
    except InfrastructureError as exc:
        if exc.details.get("status_code") == 404:
            return None
        raise


class BuildFailed(InfrastructureError):
    """A Dockerfile step failed; ``details`` carry the step and its log."""


@dataclass
class _BuildState:
    """Progress of one streamed build: the current step and its output."""

    plan: ImagePlan
    step: str = ""
    number: int = 0
    total: int = 0
    log: list[str] = field(default_factory=list)
    image_id: str | None = None
    pending: str = ""
    error: str | None = None


def _lines(state: _BuildState, text: str) -> Iterator[str]:
    state.pending += text
    *complete, state.pending = state.pending.split("\n")
    yield from (line.rstrip("\r") for line in complete)


def _on_line(state: _BuildState, line: str, sink: EventSink) -> None:
    step = _STEP_RE.match(line)
    if step:
        state.number, state.total, state.step = int(step[1]), int(step[2]), step[3]
        state.log = []
        sink(
            {
                "type": "progress",
                "image": state.plan.tag,
                "step": state.number,
                "steps": state.total,
                "message": state.step,
                "fraction": round(state.number / state.total, 3) if state.total else None,
            }
        )
        return
    built = _BUILT_RE.match(line)
    if built and state.image_id is None:
        state.image_id = built[1]
    state.log.append(line)
    sink({"type": "log", "image": state.plan.tag, "step": state.number, "line": line})


def _on_chunk(state: _BuildState, chunk: Mapping[str, Any], sink: EventSink) -> None:
    if "error" in chunk:
        if state.pending:
            state.log.append(state.pending)
        detail = chunk.get("errorDetail") or {}
        state.error = str(detail.get("message") or chunk["error"]).strip()
        return
    aux = chunk.get("aux") or {}
    if isinstance(aux, dict) and aux.get("ID"):
        state.image_id = str(aux["ID"])
    for key in ("stream", "status"):
        if isinstance(chunk.get(key), str):
            for line in _lines(state, chunk[key] if key == "stream" else chunk[key] + "\n"):
                _on_line(state, line, sink)


def _failure(state: _BuildState) -> BuildFailed:
    msg = (
        f"building {state.plan.tag} failed at step {state.number}/{state.total} "
        f"({state.step}): {state.error}"
    )
    return BuildFailed(
        msg,
        fix=f"fix {state.plan.dockerfile} (the step's log is above)",
        image=state.plan.tag,
        step=state.step,
        log=state.log[-200:],
    )


def build_one(
    api: docker.APIClient,
    root: Path,
    plan: ImagePlan,
    labels: Mapping[str, str],
    sink: EventSink,
    nocache: bool = False,
) -> str:
    """Build one image, streaming events to ``sink``; its id. BuildFailed with the step log."""
    state = _BuildState(plan)
    with translated(f"build {plan.tag}"):
        stream = api.build(
            path=str(root),
            dockerfile=plan.dockerfile,
            tag=plan.tag,
            buildargs=plan.buildargs,
            labels=dict(labels),
            network_mode="host",
            rm=True,
            forcerm=True,
            nocache=nocache,
            decode=True,
            timeout=BUILD_TIMEOUT_S,
        )
        # Read to the end even after an error chunk: a drained response frees its connection.
        for chunk in stream:
            _on_chunk(state, chunk, sink)
    if state.error is not None:
        raise _failure(state)
    built = image_id(api, plan.tag)
    if built is None or (
        state.image_id
        and not built.removeprefix("sha256:").startswith(state.image_id.removeprefix("sha256:"))
    ):
        msg = f"the engine reported no image for {plan.tag} after the build"
        raise InfrastructureError(msg, image=plan.tag)
    return built


def ensure_rootfs(api: docker.APIClient, root: Path, sink: EventSink) -> None:
    """Run images/base/build-rootfs.sh when the registry-free root image is missing."""
    if image_id(api, ROOTFS_IMAGE) is not None:
        return
    sink({"type": "progress", "image": ROOTFS_IMAGE, "message": "debootstrap (build-rootfs.sh)"})
    bash = shutil.which("bash") or "/bin/bash"
    proc = subprocess.run(  # noqa: S603 - fixed argv: the repository's own script
        [bash, str(root / "images" / "base" / "build-rootfs.sh")],
        capture_output=True,
        text=True,
        check=False,
        cwd=root,
    )
    if proc.returncode != 0:
        msg = f"images/base/build-rootfs.sh failed (exit {proc.returncode})"
        raise BuildFailed(
            msg,
            fix="it needs root, debootstrap and a Debian mirror in /etc/apt (see the script)",
            image=ROOTFS_IMAGE,
            step="build-rootfs.sh",
            log=proc.stderr.splitlines()[-200:],
        )


def build_images(
    api: docker.APIClient,
    root: Path,
    plans: Sequence[ImagePlan],
    sink: EventSink,
    nocache: bool = False,
) -> dict[str, str]:
    """Build ``plans`` in order (base first); tag -> image id."""
    ensure_rootfs(api, root, sink)
    source = prepare_ca_bundle(root)
    sink({"type": "log", "image": None, "line": f"CA bundle: {source or 'none (empty file)'}"})
    built = {}
    for plan in plans:
        labels = image_labels(root, plan.name, revision(root, plan.name))
        built[plan.tag] = build_one(api, root, plan, labels, sink, nocache)
        sink({"type": "built", "image": plan.tag, "id": built[plan.tag], "labels": labels})
    return built


# --- lock -------------------------------------------------------------------------------------

_ID_VALUE = r"(\"[^\"\n]*\"|'[^'\n]*'|[^\s,}#]+)"
_FLOW_RE = re.compile(r"^(image:\s*\{(?:[^}\n]*?,)?\s*id:\s*)" + _ID_VALUE, re.MULTILINE)
_BLOCK_HEAD_RE = re.compile(r"^image:\s*(#.*)?$", re.MULTILINE)
_BLOCK_ID_RE = re.compile(r"^(\s+id:\s*)" + _ID_VALUE)


def _replace_block(text: str, new_id: str) -> str | None:
    head = _BLOCK_HEAD_RE.search(text)
    if head is None:
        return None
    lines = text[head.end() :].split("\n")
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() and not line[0].isspace():
            break  # the image mapping ended
        match = _BLOCK_ID_RE.match(line)
        if match:
            lines[i] = f'{match[1]}"{new_id}"{line[match.end() :]}'
            return text[: head.end()] + "\n".join(lines)
    return None


def replace_image_id(text: str, new_id: str, path: Path) -> str:
    """``text`` with only the value of ``image.id`` replaced (comments and layout kept), checked
    by re-parsing: nothing but ``image.id`` may change."""
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", new_id):
        msg = f"not an image id: {new_id!r}"
        raise InvalidRequest(msg)
    new_text, count = _FLOW_RE.subn(lambda m: f'{m[1]}"{new_id}"', text, count=1)
    if count == 0:
        new_text = _replace_block(text, new_id) or text
    before = parse_policy(text.encode(), path).policy
    after = parse_policy(new_text.encode(), path).policy
    if after.image.id != new_id or after.model_copy(update={"image": before.image}) != before:
        msg = "cannot rewrite image.id with a minimal edit; update it by hand"
        raise PolicyFileError(
            msg,
            path=str(path),
            key="image.id",
        )
    return new_text


@dataclass(frozen=True)
class LockChange:
    """One policy's pin: what it was, what the local image is."""

    tool: str
    path: Path
    image: str
    pinned: str
    local: str | None
    diff: str = ""

    @property
    def current(self) -> bool:
        return self.local == self.pinned


def _policy_text(path: Path) -> str:
    """A policy file's text with its line endings as they are (``read_text`` would turn CRLF
    into LF, and the rewrite would then change every line, not only the pin)."""
    return path.read_bytes().decode("utf-8")


def plan_lock(api: docker.APIClient, files: Sequence[Path]) -> list[LockChange]:
    """For each policy file: its pin, the local image's id and the textual diff to apply."""
    changes = []
    for path in files:
        loaded = read_policy(path)
        image = loaded.policy.image
        local = image_id(api, tagged(image.name))
        diff = ""
        if local is not None and local != image.id:
            text = _policy_text(path)
            new_text = replace_image_id(text, local, path)
            diff = "".join(
                difflib.unified_diff(
                    text.splitlines(keepends=True),
                    new_text.splitlines(keepends=True),
                    fromfile=str(path),
                    tofile=str(path),
                )
            )
        changes.append(LockChange(loaded.policy.tool, path, image.name, image.id, local, diff))
    return changes


def apply_lock(change: LockChange) -> None:
    """Write the new pin (atomically, keeping the file's mode)."""
    if change.local is None or change.current:
        return
    text = _policy_text(change.path)
    new_text = replace_image_id(text, change.local, change.path)
    tmp = change.path.with_name(f".{change.path.name}.tmp")
    tmp.write_bytes(new_text.encode("utf-8"))
    shutil.copymode(change.path, tmp)
    tmp.replace(change.path)


# --- the scanner's engine side ----------------------------------------------------------------


class _ChunkReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks (the export stream), for tarfile."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._buffer = chunk
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


class DockerImageSource:
    """``scan.runner.ImageSource`` over the engine: inspect, and the flattened filesystem of a
    created-but-never-started container (no network, nothing runs)."""

    def __init__(self, api: docker.APIClient) -> None:
        self._api = api

    def inspect(self, image: str) -> dict[str, Any]:
        try:
            with translated(f"inspect image {image}"):
                return _inspect(self._api, image)
        except InfrastructureError as exc:
            if not is_not_found(exc):
                raise
            raise missing_image(image) from exc

    @contextmanager
    def filesystem(self, image: str) -> Iterator[IO[bytes]]:
        with translated(f"create a scan container from {image}"):
            container = self._api.create_container(
                image,
                command=["/scan-never-starts"],
                entrypoint=[],
                network_disabled=True,
                labels={LABEL_SCAN: "1"},
                host_config=self._api.create_host_config(network_mode="none"),
            )["Id"]
        try:
            with translated(f"export the filesystem of {image}"):
                chunks = iter(self._api.export(container))
                yield io.BufferedReader(_ChunkReader(chunks), buffer_size=1024 * 1024)
                # tarfile stops at the end-of-archive blocks; drain the padding after them so
                # the response (and its connection) is finished, not left open.
                for _ in chunks:
                    pass
        finally:
            with translated("remove the scan container"):
                self._api.remove_container(container, force=True)


__all__ = [
    "ENGINE_FIX",
    "BuildFailed",
    "DockerImageSource",
    "ImagePlan",
    "LockChange",
    "apply_lock",
    "build_images",
    "compose_env",
    "connect",
    "plan_images",
    "plan_lock",
    "replace_image_id",
]
