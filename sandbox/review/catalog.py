"""The rule catalogue of ``sandbox policy check`` and the finding value type.

Rule ids are part of the external contract (CI configs, SARIF alerts and reviewers refer to
them): never renumber or reuse one; retire an id by leaving a gap.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import Literal

Level = Literal["error", "warning"]
# Control, format (bidi overrides) and line/paragraph separator characters.
_UNSHOWN = frozenset({"Cc", "Cf", "Zl", "Zp"})


def printable(text: str) -> str:
    """Policy text for a terminal or a log: control, format and line-separator characters as
    JSON escapes (``\\u001b``). A terminal acts on them (an ESC sequence in a justification can
    erase the loosening printed above it), and bidi overrides reorder what a reviewer reads."""
    return "".join(
        json.dumps(char)[1:-1] if unicodedata.category(char) in _UNSHOWN else char for char in text
    )


@dataclass(frozen=True)
class Rule:
    """One baseline rule: stable id, short name, what it checks and how to fix a finding."""

    id: str
    name: str
    summary: str
    help: str
    justifiable: bool = False
    """Whether a ``justification`` entry lifts it (a relaxation) or nothing does (a hard rule)."""
    severity: float = 7.0
    """GitHub code-scanning ``security-severity`` (0-10: 7+ is high, 9+ critical)."""
    level: Level = "error"


@dataclass(frozen=True)
class Finding:
    """One violated rule at one place of one file."""

    rule: str
    path: str
    line: int
    message: str
    key: str | None = None
    """Dotted key the finding is about (``limits.memory_mb``), when there is one."""

    def text(self) -> str:
        return printable(f"{self.path}:{self.line}: {self.rule}: {self.message}")


RULES: tuple[Rule, ...] = (
    Rule(
        "SBX001",
        "policy-parses",
        "Every policy file parses and validates strictly.",
        "Fix the named key: unknown or misspelled keys, wrong types, values out of range, YAML "
        "aliases, duplicate keys and a `tool` that differs from the file name are all refused, "
        "and a file that does not parse is not checked further.",
        severity=5.0,
    ),
    Rule(
        "SBX002",
        "non-root-user",
        "The container user is an explicit non-root `uid:gid` with uid at or above `min_uid`.",
        'Set `user: "65532:65532"` (or another numeric uid:gid >= the baseline\'s min_uid). '
        "Without a gid Docker uses the image's group for the uid, which is root (0) when the "
        "image has no passwd entry; low uids may own files in the image.",
        severity=8.0,
    ),
    Rule(
        "SBX003",
        "network-none",
        "`network` is `none` unless `justification.network` says why it is not.",
        'Use `network: none`, or add `justification: {network: "..."}` naming what the tool '
        "must reach. Host and container network namespaces are never allowed.",
        justifiable=True,
        severity=8.0,
    ),
    Rule(
        "SBX004",
        "limits-explicit",
        "The policy states its resource limits instead of relying on defaults.",
        "Write every limit named by the baseline's `required_limits` under `limits:`, so a "
        "reviewer sees them in the file and a change to a default cannot move them silently.",
        severity=4.0,
    ),
    Rule(
        "SBX005",
        "limits-ceiling",
        "Limits, output size and input count are at or below the baseline's ceilings.",
        "Lower the value to the ceiling in `policies/baseline.yaml` (built-in ceilings when it "
        "is absent). A justification does not lift a ceiling; raising one is a baseline change "
        "that `sandbox policy diff` reports as loosening.",
        severity=6.0,
    ),
    Rule(
        "SBX006",
        "image-pinned",
        "The image is pinned by a real content id (`sha256:` and 64 hex digits).",
        "Run `sandbox images lock` to pin the id of the image built here; tags and placeholder "
        "ids (all zeros) are not pins.",
        severity=7.0,
    ),
    Rule(
        "SBX007",
        "args-schema-closed",
        "`args_schema` is closed: `additionalProperties: false` on every object, strings with "
        "`maxLength` (or enum/const/bounded pattern), arrays with `maxItems` and item schemas.",
        "Close the named schema node, or justify the open node under "
        "`justification` keyed by its path (e.g. `args_schema.properties.payload`).",
        justifiable=True,
        severity=5.0,
    ),
    Rule(
        "SBX008",
        "input-roots-safe",
        "Input roots exist and are not `/`, system or credential directories, and neither "
        "contain nor lie under a Docker socket.",
        "Point `inputs.allowed_roots` at a dedicated data directory. A read-only mount does not "
        "stop `connect()` on a Unix socket, so a root holding the Docker socket hands the "
        "container the host.",
        severity=9.0,
    ),
    Rule(
        "SBX009",
        "env-no-secrets",
        "`env` holds no secret-looking names or values (tokens, keys, passwords, high-entropy "
        "strings).",
        "Policies are committed and shown in audits; pass secrets another way (an input file "
        "under an allowed root), never in `env`.",
        severity=8.5,
    ),
    Rule(
        "SBX010",
        "runtime-allowed",
        "`runtime` is one the baseline allows (`runc` or `runsc`).",
        "Use `runc` (the default) or `runsc` (gVisor, a second kernel boundary); the baseline's "
        "`runtimes` may require `runsc`.",
        severity=6.0,
    ),
    Rule(
        "SBX011",
        "relaxation-justified",
        "Every limit, output size or input count above the baseline's defaults carries a "
        "justification.",
        "Lower the value, or add `justification` keyed by the field (`limits.memory_mb`) or its "
        "section (`limits`) saying why the tool needs it.",
        justifiable=True,
        severity=4.0,
    ),
    Rule(
        "SBX012",
        "justification-meaningful",
        "Each justification names a relaxation the policy has and says why in words.",
        "Remove justifications that justify nothing (a misspelled key leaves the relaxation it "
        "meant unjustified) and write at least a sentence for the rest.",
        severity=3.0,
        level="warning",
    ),
)

RULES_BY_ID: dict[str, Rule] = {rule.id: rule for rule in RULES}
