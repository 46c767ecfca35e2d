"""CVSS v3.x base scores from vector strings (``CVSS:3.1/AV:N/AC:L/...``), so advisories that
carry only a vector still get a severity. The formulas are the FIRST specification's. Pure.
"""

from __future__ import annotations

import math

from .model import Severity

_WEIGHTS: dict[str, dict[str, float]] = {
    "AV": {"N": 0.85, "A": 0.62, "L": 0.55, "P": 0.2},
    "AC": {"L": 0.77, "H": 0.44},
    "UI": {"N": 0.85, "R": 0.62},
    "C": {"H": 0.56, "L": 0.22, "N": 0.0},
    "I": {"H": 0.56, "L": 0.22, "N": 0.0},
    "A": {"H": 0.56, "L": 0.22, "N": 0.0},
}
_PR = {"U": {"N": 0.85, "L": 0.62, "H": 0.27}, "C": {"N": 0.85, "L": 0.68, "H": 0.5}}


def roundup(value: float) -> float:
    """CVSS 3.1's Roundup: the smallest one-decimal number >= value, immune to float noise."""
    scaled = round(value * 100_000)
    if scaled % 10_000 == 0:
        return scaled / 100_000.0
    return (math.floor(scaled / 10_000) + 1) / 10.0


def _metrics(vector: str) -> dict[str, str] | None:
    parts = vector.strip().split("/")
    if not parts or not parts[0].startswith("CVSS:3"):
        return None
    metrics = dict(p.split(":", 1) for p in parts[1:] if ":" in p)
    needed = {"AV", "AC", "PR", "UI", "S", "C", "I", "A"}
    return metrics if needed <= metrics.keys() else None


def base_score(vector: str) -> float | None:
    """The base score of a CVSS v3.0/3.1 vector, or None when it is not one."""
    m = _metrics(vector)
    if m is None:
        return None
    try:
        scope = m["S"]
        iss = 1 - (1 - _WEIGHTS["C"][m["C"]]) * (1 - _WEIGHTS["I"][m["I"]]) * (
            1 - _WEIGHTS["A"][m["A"]]
        )
        exploit = (
            8.22 * _WEIGHTS["AV"][m["AV"]] * _WEIGHTS["AC"][m["AC"]] * _PR[scope][m["PR"]]
        ) * _WEIGHTS["UI"][m["UI"]]
    except KeyError:
        return None
    changed = 7.52 * (iss - 0.029) - 3.25 * (iss - 0.02) ** 15
    impact = 6.42 * iss if scope == "U" else changed
    if impact <= 0:
        return 0.0
    total = impact + exploit if scope == "U" else 1.08 * (impact + exploit)
    return roundup(min(total, 10.0))


def rating(score: float) -> Severity:
    """The qualitative rating of a score (``None`` in CVSS is ``info`` here)."""
    if score >= 9.0:
        return Severity.CRITICAL
    if score >= 7.0:
        return Severity.HIGH
    if score >= 4.0:
        return Severity.MEDIUM
    if score > 0.0:
        return Severity.LOW
    return Severity.INFO
