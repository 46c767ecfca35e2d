"""The one exception tree. Every class maps to one frame ``error.kind``, one exit status and one
process exit code (contract section 1)::

    SandboxError
    ├── InvalidRequest        kind InvalidRequest       status invalid_request        exit 2
    │   └── PolicyFileError   (a policy file does not parse or validate: file, line, key)
    ├── PolicyDenied          kind PolicyDenied         status denied                 exit 3
    ├── ToolError             kind ToolError            status tool_error             exit 1
    │   └── ProtocolError     kind ProtocolError        status tool_error             exit 1
    ├── Timeout               kind Timeout              status timeout                exit 4
    ├── ResourceLimit         kind ResourceLimit        status resource_limit         exit 5
    ├── InfrastructureError   kind InfrastructureError  status infrastructure_error   exit 6
    └── Interrupted           kind Interrupted          status interrupted            exit 130

"Could not run" raises one of these; "ran and failed" is data in the exit frame.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

Status = Literal[
    "ok",
    "tool_error",
    "invalid_request",
    "denied",
    "timeout",
    "resource_limit",
    "infrastructure_error",
    "interrupted",
]
ErrorKind = Literal[
    "InvalidRequest",
    "PolicyDenied",
    "ToolError",
    "Timeout",
    "ResourceLimit",
    "ProtocolError",
    "InfrastructureError",
    "Interrupted",
]

EXIT_CODES: dict[Status, int] = {
    "ok": 0,
    "tool_error": 1,
    "invalid_request": 2,
    "denied": 3,
    "timeout": 4,
    "resource_limit": 5,
    "infrastructure_error": 6,
    "interrupted": 130,
}


class SandboxError(Exception):
    """Root of every error this package raises on purpose."""

    kind: ClassVar[ErrorKind] = "InfrastructureError"
    status: ClassVar[Status] = "infrastructure_error"

    def __init__(self, message: str, *, fix: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.details: dict[str, Any] = {k: v for k, v in details.items() if v is not None}
        if fix:
            self.details["fix"] = fix

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.fix})" if self.fix else self.message


class InvalidRequest(SandboxError):
    """The request is malformed: bad JSON, an unknown key, args failing the tool's schema."""

    kind: ClassVar[ErrorKind] = "InvalidRequest"
    status: ClassVar[Status] = "invalid_request"


class PolicyFileError(InvalidRequest):
    """A policy file cannot be read, parsed or validated; names the file, line and key."""

    def __init__(
        self,
        message: str,
        *,
        path: str,
        line: int | None = None,
        key: str | None = None,
        fix: str | None = None,
    ) -> None:
        where = f"{path}:{line}" if line else path
        text = f"{where}: {key}: {message}" if key else f"{where}: {message}"
        super().__init__(text, fix=fix, path=path, line=line, key=key)
        self.path = path
        self.line = line
        self.key = key


class PolicyDenied(SandboxError):
    """The policy forbids the request: no policy for the tool, an input outside the allowed
    roots, a limit above the policy's."""

    kind: ClassVar[ErrorKind] = "PolicyDenied"
    status: ClassVar[Status] = "denied"


class ToolError(SandboxError):
    """The tool ran and failed (non-zero exit)."""

    kind: ClassVar[ErrorKind] = "ToolError"
    status: ClassVar[Status] = "tool_error"


class ProtocolError(ToolError):
    """The tool broke protocol v1 in a way that fails the run."""

    kind: ClassVar[ErrorKind] = "ProtocolError"


class Timeout(SandboxError):
    """The run passed its deadline and was killed."""

    kind: ClassVar[ErrorKind] = "Timeout"
    status: ClassVar[Status] = "timeout"


class ResourceLimit(SandboxError):
    """The run hit a resource limit: memory (OOM), pids, output or stream size."""

    kind: ClassVar[ErrorKind] = "ResourceLimit"
    status: ClassVar[Status] = "resource_limit"


class InfrastructureError(SandboxError):
    """The engine is unreachable or failed, or the image is missing or not the pinned one."""

    kind: ClassVar[ErrorKind] = "InfrastructureError"
    status: ClassVar[Status] = "infrastructure_error"


class Interrupted(SandboxError):
    """SIGINT/SIGTERM or a cancel: the container was stopped and removed."""

    kind: ClassVar[ErrorKind] = "Interrupted"
    status: ClassVar[Status] = "interrupted"


ERROR_BY_STATUS: dict[Status, type[SandboxError]] = {
    "tool_error": ToolError,
    "invalid_request": InvalidRequest,
    "denied": PolicyDenied,
    "timeout": Timeout,
    "resource_limit": ResourceLimit,
    "infrastructure_error": InfrastructureError,
    "interrupted": Interrupted,
}
