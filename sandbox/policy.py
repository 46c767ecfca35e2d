"""Policy files: the pydantic model of ``policies/TOOL.yaml``, a strict loader that names file,
line and key on any error, and ``authorize`` (is this request allowed by this policy).

Reading (I/O) is ``read_policy``; ``parse_policy`` is pure (bytes in, policy out).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import jsonschema_rs
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import InvalidRequest, PolicyDenied, PolicyFileError
from .request import INPUT_NAME_RE, Request

MAX_POLICY_BYTES = 256 * 1024
TOOL_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
IMAGE_ID_RE = r"^sha256:[0-9a-f]{64}$"
# What a policy holds until `sandbox images lock` pins the built image (SBX006 flags it).
PLACEHOLDER_ID = "sha256:" + "0" * 64
MAX_FRAME_KB = 1024
MAX_USER_ID = 2**31 - 1
# Files in the policy directory that are not tool policies.
NON_TOOL_FILES = frozenset({"baseline.yaml"})


class _Strict(BaseModel):
    # Field descriptions become schema descriptions, so editors show them (policy schema).
    # Spelled out rather than taken from attribute docstrings: extracting those reads and
    # parses this module's source at import, on every `sandbox run`.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ImageRef(_Strict):
    name: str = Field(
        min_length=1,
        max_length=255,
        pattern=r"^[a-z0-9][a-z0-9._/:-]*$",
        description="Repository (and optional tag) the image is built as, e.g. ``sandbox/dbt``.",
    )
    id: str = Field(
        pattern=IMAGE_ID_RE,
        description="The pinned image id; a run refuses any image whose id differs.",
    )


class InputsPolicy(_Strict):
    allowed_roots: list[str] = Field(
        default_factory=list,
        description="Host directories (relative to the policy file) under which request inputs "
        "must lie.",
    )
    max: int = Field(
        default=0, ge=0, le=64, description="How many inputs one request may mount (read-only)."
    )


class OutputPolicy(_Strict):
    required: bool = Field(
        default=False, description="Whether a request must name an output directory."
    )
    max_mb: int = Field(
        default=64,
        ge=1,
        le=1024 * 1024,
        description="Total size the script may write under /output (and the largest single file).",
    )


class Limits(_Strict):
    timeout_s: float = Field(
        default=60.0,
        gt=0,
        le=24 * 3600,
        description="Wall-clock deadline of a run; a request may lower it, never raise it.",
    )
    memory_mb: int = Field(
        default=512,
        ge=32,
        le=1024 * 1024,
        description="Memory limit; swap is the same value, so the container gets no swap.",
    )
    cpus: float = Field(default=1.0, gt=0, le=256, description="CPU quota in cores.")
    pids: int = Field(
        default=128, ge=8, le=65536, description="The tool's own processes and threads."
    )
    tmpfs_mb: int = Field(
        default=64,
        ge=1,
        le=1024 * 1024,
        description="Size of the /tmp tmpfs; it counts against memory, so it must be below "
        "``memory_mb``.",
    )
    stdout_mb: int = Field(
        default=64,
        ge=1,
        le=1024 * 1024,
        description="Bytes the script may write to stdout and stderr together.",
    )
    frame_kb: int = Field(
        default=MAX_FRAME_KB,
        ge=4,
        le=MAX_FRAME_KB,
        description="Longest frame line in KiB (the protocol caps it at 1 MiB).",
    )

    @model_validator(mode="after")
    def _tmpfs_within_memory(self) -> Limits:
        if self.tmpfs_mb >= self.memory_mb:
            msg = f"tmpfs_mb ({self.tmpfs_mb}) must be below memory_mb ({self.memory_mb})"
            raise ValueError(msg)
        return self


class PoolPolicy(_Strict):
    warm: int = Field(
        default=0,
        ge=0,
        le=16,
        description="Containers to keep created ahead of need (used by ``sandbox serve``).",
    )


class Policy(_Strict):
    """One whitelisted tool: what it runs, from which image, with which limits."""

    version: Literal[1] = Field(description="Policy format version.")
    tool: str = Field(
        pattern=TOOL_NAME_RE.pattern,
        description="Tool name; equals the file name without ``.yaml``.",
    )
    description: str = Field(
        default="", max_length=2000, description="What the tool does, for humans."
    )
    image: ImageRef = Field(description="The image and its pinned id.")
    command: list[str] = Field(
        min_length=1,
        max_length=64,
        description="Argv run in the container; fixed by the policy, requests never build "
        "commands.",
    )
    args_schema: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "additionalProperties": False},
        description="JSON Schema (draft 2020-12) the request's ``args`` must satisfy.",
    )
    inputs: InputsPolicy = Field(
        default=InputsPolicy(), description="Which host paths a request may mount read-only."
    )
    output: OutputPolicy = Field(default=OutputPolicy(), description="The output directory rules.")
    limits: Limits = Field(
        default=Limits(), description="Resource limits, the strict ones by default."
    )
    network: str = Field(
        default="none",
        pattern=r"^[a-z][a-z0-9_.-]{0,63}$",
        description="``none``; anything else needs ``justification.network``.",
    )
    runtime: Literal["runc", "runsc"] = Field(
        default="runc",
        description="OCI runtime: runc, or runsc (gVisor) for a second kernel boundary.",
    )
    user: str = Field(
        default="65532:65532",
        pattern=r"^[0-9]{1,10}(:[0-9]{1,10})?$",
        description="Numeric uid:gid; never root.",
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Fixed environment; the host environment never leaks in."
    )
    justification: dict[str, str] = Field(
        default_factory=dict,
        description="Reviewer-facing reason for every relaxation, keyed by the relaxed field.",
    )
    pool: PoolPolicy = Field(
        default=PoolPolicy(), description="Warm-pool sizing for ``sandbox serve``."
    )

    @field_validator("user")
    @classmethod
    def _not_root(cls, value: str) -> str:
        # Numerically, as Docker reads them: "00" is uid (or gid) 0 too.
        ids = [int(part) for part in value.split(":")]
        if 0 in ids:
            msg = "must not be root (uid or gid 0)"
            raise ValueError(msg)
        if max(ids) > MAX_USER_ID:
            msg = f"uid and gid must be at most {MAX_USER_ID} (the engine refuses larger ones)"
            raise ValueError(msg)
        return value

    @field_validator("network")
    @classmethod
    def _no_host_namespaces(cls, value: str) -> str:
        if value == "host" or value.startswith("container"):
            msg = f"network {value!r} would share a host or container namespace"
            raise ValueError(msg)
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", key):
                msg = f"environment variable name {key!r} is not valid"
                raise ValueError(msg)
        return value

    @field_validator("args_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        try:
            compiled = compile_args_schema(value)
        except jsonschema_rs.ValidationError as exc:
            if isinstance(exc.kind, jsonschema_rs.ValidationErrorKind.Referencing):
                msg = (
                    f"not a valid JSON Schema: {exc.message}; a $ref must point inside the "
                    "schema, e.g. #/$defs/NAME"
                )
                raise ValueError(msg) from exc
            where = "/".join(str(p) for p in exc.instance_path) or "(root)"
            msg = f"not a valid JSON Schema at {where}: {exc.message}"
            raise ValueError(msg) from exc
        except (jsonschema_rs.ReferencingError, ValueError) as exc:
            msg = f"not a valid JSON Schema: {exc}"
            raise ValueError(msg) from exc
        if value.get("type") != "object":
            msg = "must describe an object (type: object)"
            raise ValueError(msg)
        if isinstance(info.context, dict):
            info.context[_COMPILED_ARGS] = compiled  # checking compiled it: kept, not redone
        return value


@dataclass(frozen=True)
class LoadedPolicy:
    """A validated policy with where it came from."""

    policy: Policy
    path: Path
    sha256: str
    # Compiled once, at parse: every run of the policy checks its args with it.
    args_validator: jsonschema_rs.Validator = field(repr=False, compare=False)

    @cached_property
    def allowed_roots(self) -> tuple[Path, ...]:
        """Allowed input roots as real absolute paths (relative ones from the policy's dir)."""
        base = self.path.parent
        return tuple(real_root(base, root) for root in self.policy.inputs.allowed_roots)


def real_root(base: Path, root: str) -> Path:
    """An allowed root's real path, resolved as inputs are (a relative one from ``base``, the
    policy's directory). One that cannot be resolved (a symlink loop, a link this process may
    not read) stays as written: nothing under it can be mounted, so it allows nothing (and
    ``policy check`` says why) instead of failing every run of the tool."""
    path = base / Path(root).expanduser()
    try:
        return Path(os.path.realpath(path))
    except OSError:
        return Path(os.path.normpath(path))


def compile_args_schema(schema: dict[str, Any]) -> jsonschema_rs.Validator:
    """The compiled ``args_schema``. Compiling checks it against the 2020-12 meta-schema and
    its patterns as regexes. jsonschema-rs rather than the Python ``jsonschema``: its import
    costs ≈5 ms of a one-shot run's start instead of ≈37 (docs/performance.md), and its
    ``pattern`` is ECMA-262's, as JSON Schema specifies: ``$`` is the end of the string, where
    Python's ``re`` also lets a trailing newline through. ``offline``: a ``$ref`` that leaves
    the schema is an error, never a fetch."""
    return jsonschema_rs.Draft202012Validator(schema, validate_formats=True, offline=True)


# Where ``Policy``'s schema check leaves the validator it compiled, in a validation context.
_COMPILED_ARGS = "args_validator"


# --- parsing (pure) ---------------------------------------------------------------------------


# libyaml's parser where PyYAML has it: a policy parses in ≈0.3 ms instead of ≈4 (every one-shot
# run parses one), and libyaml refuses nesting deeper than 1,000 levels with a marked error.
# (PyYAML's own parser recurses and runs out of stack first: ``load_yaml`` turns that into a
# policy error too.)
_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _PolicyLoader(_SafeLoader):  # type: ignore[misc]
    """A safe loader that refuses duplicate keys (aliases: ``_refuse_aliases``)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def _refuse_aliases(root: yaml.Node) -> None:
    """Refuse a node tree in which an alias occurs, before anything is constructed from it (no
    billion laughs). An alias is the node its anchor names, reached a second time: found by
    identity, on a walk that stops at the first one."""
    seen: set[int] = set()
    stack: list[yaml.Node] = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases are not allowed in policies", node.start_mark
            )
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            stack.extend(part for pair in node.value for part in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _line_of(node: Any, loc: tuple[int | str, ...]) -> tuple[int | None, str]:
    """The 1-based line of the YAML node at a pydantic error location, and the dotted key."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((kv for kv in node.value if kv[0].value == part), None)
            if match is None:
                break
            line = match[0].start_mark.line + 1
            node = match[1]
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line, ".".join(str(p) for p in loc)


def load_yaml(text: bytes, path: Path) -> tuple[Any, Any]:
    """Strictly parse YAML bytes (no aliases, no duplicate keys, size-capped): the data and its
    node tree (``start_mark`` gives lines). Raises PolicyFileError naming the line."""
    where = str(path)
    if len(text) > MAX_POLICY_BYTES:
        msg = f"file is larger than {MAX_POLICY_BYTES} bytes"
        raise PolicyFileError(msg, path=where)
    try:
        decoded = text.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        msg = "not UTF-8 text"
        raise PolicyFileError(msg, path=where) from exc
    loader = _PolicyLoader(decoded)
    try:
        node = loader.get_single_node()
        if node is not None:
            _refuse_aliases(node)
        data = loader.construct_document(node) if node is not None else None
    except RecursionError as exc:  # PyYAML's own composer, without libyaml
        msg = "nested deeper than this parser can follow (libyaml allows 1,000 levels)"
        raise PolicyFileError(msg, path=where) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or str(exc)
        raise PolicyFileError(problem, path=where, line=mark.line + 1 if mark else None) from exc
    except yaml.YAMLError as exc:
        raise PolicyFileError(str(exc), path=where) from exc
    finally:
        loader.dispose()
    return data, node


def parse_policy(text: bytes, path: Path) -> LoadedPolicy:
    """Parse and validate one policy file's bytes. Raises PolicyFileError naming line and key."""
    where = str(path)
    data, node = load_yaml(text, path)
    if not isinstance(data, dict):
        msg = "a policy must be a YAML mapping"
        raise PolicyFileError(msg, path=where, line=1)
    context: dict[str, Any] = {}
    try:
        policy = Policy.model_validate(data, context=context)
    except ValidationError as exc:
        errors = exc.errors()
        # A misspelled required key is two errors, the key missing and an unknown one: the
        # unknown one is what the author typed, so it is the one to name.
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        line, key = _line_of(node, tuple(first["loc"]))
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        if key == "image.id":
            message += f'; write id: "{PLACEHOLDER_ID}" and run `sandbox images lock` to pin it'
        raise PolicyFileError(message, path=where, line=line, key=key or None) from exc
    if path.stem != policy.tool:
        line, _ = _line_of(node, ("tool",))
        msg = f"tool {policy.tool!r} does not match the file name {path.name!r}"
        raise PolicyFileError(
            msg,
            path=where,
            line=line,
            key="tool",
        )
    compiled = context.get(_COMPILED_ARGS)  # the schema check compiled it
    if compiled is None:  # a defaulted schema is not checked
        compiled = compile_args_schema(policy.args_schema)
    return LoadedPolicy(
        policy=policy, path=path, sha256=hashlib.sha256(text).hexdigest(), args_validator=compiled
    )


# --- reading (I/O) ----------------------------------------------------------------------------


def read_policy_bytes(path: Path) -> bytes:
    """A policy file's bytes, at most one byte past the size cap (parse refuses those)."""
    try:
        with path.open("rb") as handle:
            return handle.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        msg = f"cannot read: {exc.strerror}"
        raise PolicyFileError(msg, path=str(path)) from exc


def read_policy(path: Path) -> LoadedPolicy:
    """Read and parse one policy file."""
    return parse_policy(read_policy_bytes(path), path)


# The fix for a policy directory that is not there, whichever command (and path) named it.
POLICY_DIR_FIX = (
    "check the path; the policy directory is --policies DIR (before the command), "
    "else $SANDBOX_POLICY_DIR, else ./policies"
)


def policy_files(directory: Path) -> list[Path]:
    """The tool policy files of a directory, sorted."""
    if not directory.is_dir():
        msg = "policy directory not found"
        raise PolicyFileError(msg, path=str(directory), fix=POLICY_DIR_FIX)
    return sorted(p for p in directory.glob("*.yaml") if p.name not in NON_TOOL_FILES)


def load_policy_dir(directory: Path) -> dict[str, LoadedPolicy]:
    """Every tool policy of a directory, by tool name; the first bad file raises."""
    return {lp.policy.tool: lp for lp in map(read_policy, policy_files(directory))}


def find_policy(directory: Path, tool: str) -> LoadedPolicy:
    """The policy for one tool, reading only its file; PolicyDenied when there is none."""
    return read_policy(_policy_path(directory, tool))


def _policy_path(directory: Path, tool: str) -> Path:
    """The policy file of one tool; PolicyDenied when there is none."""
    if not TOOL_NAME_RE.fullmatch(tool):
        msg = f"no policy for tool {tool!r}: not a valid tool name"
        raise PolicyDenied(msg, tool=tool)
    path = directory / f"{tool}.yaml"
    if path.is_file():
        return path
    if directory.is_dir():
        msg = f"no policy for tool {tool!r} in {directory}"
        fix = "run `sandbox tools` to list the whitelisted tools"
    else:
        msg = f"no policy for tool {tool!r}: the policy directory {directory} does not exist"
        fix = POLICY_DIR_FIX
    raise PolicyDenied(msg, tool=tool, fix=fix)


class PolicyCache:
    """``find_policy`` for a long-lived coordinator: a file whose bytes hash as before is not
    parsed again, and keeps its compiled args schema. The file is still read and hashed on
    every call (microseconds), so an edit takes effect at the next run."""

    def __init__(self) -> None:
        self._by_path: dict[Path, LoadedPolicy] = {}
        self._lock = threading.Lock()

    def find(self, directory: Path, tool: str) -> LoadedPolicy:
        path = _policy_path(directory, tool)
        text = read_policy_bytes(path)
        with self._lock:
            cached = self._by_path.get(path)
        if cached is not None and cached.sha256 == hashlib.sha256(text).hexdigest():
            return cached
        loaded = parse_policy(text, path)
        with self._lock:
            self._by_path[path] = loaded
        return loaded


def tool_rows(policy_dir: Path) -> list[dict[str, Any]]:
    """The whitelisted tools, as ``sandbox tools --json`` lists them."""
    return [
        {
            "tool": name,
            "description": lp.policy.description,
            "image": lp.policy.image.name,
            "image_id": lp.policy.image.id,
            "runtime": lp.policy.runtime,
            "network": lp.policy.network,
            "timeout_s": lp.policy.limits.timeout_s,
            "memory_mb": lp.policy.limits.memory_mb,
            "args_schema": lp.policy.args_schema,
        }
        for name, lp in sorted(load_policy_dir(policy_dir).items())
    ]


# --- authorization (pure) ---------------------------------------------------------------------


def _check_args(loaded: LoadedPolicy, request: Request) -> None:
    try:
        errors = list(loaded.args_validator.iter_errors(request.args))
    except ValueError as exc:  # a value JSON cannot hold (only a library caller can pass one)
        msg = f"args of tool {request.tool!r} are not JSON: {exc}"
        raise InvalidRequest(msg, tool=request.tool) from exc
    if errors:
        # The shallowest error first, as the Python jsonschema's best_match chose: a wrong key
        # at the top says more than the many errors nested under it.
        error = min(errors, key=lambda e: len(e.instance_path))
        where = "/".join(str(p) for p in error.instance_path) or "(root)"
        msg = f"args do not match the schema of tool {request.tool!r} at {where}: {error.message}"
        raise InvalidRequest(
            msg,
            tool=request.tool,
            path=where,
        )


def _check_inputs(policy: Policy, request: Request) -> None:
    if len(request.inputs) > policy.inputs.max:
        msg = (
            f"{len(request.inputs)} inputs requested; tool {policy.tool!r} allows "
            f"{policy.inputs.max}"
        )
        raise PolicyDenied(
            msg,
            tool=policy.tool,
            limit="inputs.max",
        )
    for name in request.inputs:
        if not INPUT_NAME_RE.fullmatch(name):
            msg = (
                f"input name {name!r} is not valid: 1 to 64 letters, digits, '_', '-' or '.', "
                "not starting with '-' or '.'"
            )
            raise InvalidRequest(
                msg,
                key=name,
            )


def _check_output(policy: Policy, request: Request) -> None:
    if policy.output.required and request.output_dir is None:
        msg = f"tool {policy.tool!r} requires an output directory"
        raise InvalidRequest(
            msg,
            fix="pass --output DIR (or output_dir in the request)",
        )


def _check_timeout(policy: Policy, request: Request) -> None:
    if request.timeout_s is not None and request.timeout_s > policy.limits.timeout_s:
        msg = f"timeout {request.timeout_s:g}s is above the policy's {policy.limits.timeout_s:g}s"
        raise PolicyDenied(
            msg,
            tool=policy.tool,
            limit="timeout_s",
        )


def authorize(loaded: LoadedPolicy, request: Request) -> None:
    """Raise InvalidRequest or PolicyDenied unless the policy allows the request."""
    policy = loaded.policy
    _check_output(policy, request)
    _check_timeout(policy, request)
    _check_inputs(policy, request)
    _check_args(loaded, request)


def effective_timeout(policy: Policy, request: Request) -> float:
    """The run's deadline in seconds: the request may only lower the policy's."""
    if request.timeout_s is None:
        return policy.limits.timeout_s
    return min(request.timeout_s, policy.limits.timeout_s)
