"""The baseline ``policy check`` holds policies to: ``policies/baseline.yaml``, else built-ins.

Two numbers per bounded field: ``justify_above`` (a value above it is a relaxation that needs a
justification) and ``ceilings`` (a hard maximum nothing lifts). Parsing is pure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    ValidationError,
    model_validator,
)

from ..errors import PolicyFileError
from ..policy import InputsPolicy, Limits, OutputPolicy, load_yaml
from .locate import KeyLines

BASELINE_FILE = "baseline.yaml"

BoundedField = Literal[
    "limits.timeout_s",
    "limits.memory_mb",
    "limits.cpus",
    "limits.pids",
    "limits.tmpfs_mb",
    "limits.stdout_mb",
    "output.max_mb",
    "inputs.max",
]
BOUNDED_FIELDS: tuple[BoundedField, ...] = get_args(BoundedField)
LimitName = Literal["timeout_s", "memory_mb", "cpus", "pids", "tmpfs_mb", "stdout_mb", "frame_kb"]
Runtime = Literal["runc", "runsc"]
ALL_RUNTIMES: tuple[Runtime, ...] = get_args(Runtime)
REQUIRED_LIMITS: tuple[LimitName, ...] = (
    "timeout_s",
    "memory_mb",
    "cpus",
    "pids",
    "tmpfs_mb",
    "stdout_mb",
)

_LIMITS, _OUTPUT, _INPUTS = Limits(), OutputPolicy(), InputsPolicy()
# The policy format's own defaults are the strict values: anything above them is a relaxation.
BUILTIN_JUSTIFY_ABOVE: dict[BoundedField, float] = {
    "limits.timeout_s": _LIMITS.timeout_s,
    "limits.memory_mb": _LIMITS.memory_mb,
    "limits.cpus": _LIMITS.cpus,
    "limits.pids": _LIMITS.pids,
    "limits.tmpfs_mb": _LIMITS.tmpfs_mb,
    "limits.stdout_mb": _LIMITS.stdout_mb,
    "output.max_mb": _OUTPUT.max_mb,
    "inputs.max": _INPUTS.max,
}
# Sized for the data tools on a small host: an hour, 8 GiB, 4 cores.
BUILTIN_CEILINGS: dict[BoundedField, float] = {
    "limits.timeout_s": 3600,
    "limits.memory_mb": 8192,
    "limits.cpus": 4,
    "limits.pids": 1024,
    "limits.tmpfs_mb": 1024,
    "limits.stdout_mb": 1024,
    "output.max_mb": 16384,
    "inputs.max": 16,
}


class Baseline(BaseModel):
    """The rules' settable numbers; every field defaults to the built-in value."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True
    )

    version: Literal[1] = 1
    """Baseline format version."""
    min_uid: int = Field(default=1000, ge=1, le=2**31 - 1)
    """Lowest container uid allowed (SBX002); system accounts below it may own image files."""
    runtimes: list[Runtime] = Field(default_factory=lambda: list(ALL_RUNTIMES), min_length=1)
    """OCI runtimes a policy may use (SBX010); ``[runsc]`` requires gVisor everywhere."""
    required_limits: list[LimitName] = Field(default_factory=lambda: list(REQUIRED_LIMITS))
    """Limits every policy must write out (SBX004)."""
    # Finite: NaN compares false with everything, so it would bound nothing (and `policy diff`
    # would call it tightening); infinity bounds nothing either.
    justify_above: dict[BoundedField, FiniteFloat] = Field(default_factory=dict)
    """Values above these are relaxations that need a justification (SBX011)."""
    ceilings: dict[BoundedField, FiniteFloat] = Field(default_factory=dict)
    """Hard maximums (SBX005); no justification lifts them."""

    def threshold(self, field: BoundedField) -> float:
        return self.justify_above.get(field, BUILTIN_JUSTIFY_ABOVE[field])

    def ceiling(self, field: BoundedField) -> float:
        return self.ceilings.get(field, BUILTIN_CEILINGS[field])

    @model_validator(mode="after")
    def _ceilings_above_thresholds(self) -> Baseline:
        for field in BOUNDED_FIELDS:
            if self.ceiling(field) < self.threshold(field):
                msg = f"ceiling of {field} ({self.ceiling(field):g}) is below its justify_above"
                raise ValueError(msg)
        return self


BUILTIN_BASELINE = Baseline()


def parse_baseline(text: bytes, path: Path) -> Baseline:
    """Parse ``baseline.yaml`` bytes as strictly as a policy. Raises PolicyFileError."""
    data, node = load_yaml(text, path)
    if data is None:
        return BUILTIN_BASELINE
    if not isinstance(data, dict):
        msg = "a baseline must be a YAML mapping"
        raise PolicyFileError(msg, path=str(path), line=1)
    try:
        return Baseline.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        # pydantic marks a bad dict key with a trailing "[key]"; the key itself is the place.
        loc = tuple(part for part in first["loc"] if part != "[key]")
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        key = ".".join(str(part) for part in loc) or None
        line = KeyLines(node).line(loc)
        raise PolicyFileError(message, path=str(path), line=line, key=key) from exc
