"""Does an environment variable look like it carries a secret? Name and value heuristics. Pure.

Reasons never quote the value: findings end up in CI logs and code-scanning alerts.
"""

from __future__ import annotations

import math
import re
from collections import Counter

# Whole words of a variable name (split on '_'), so TOKENIZERS_PARALLELISM is not a token.
_SECRET_WORDS = frozenset(
    {
        "TOKEN",
        "SECRET",
        "SECRETS",
        "PASSWORD",
        "PASSWD",
        "PASSPHRASE",
        "CREDENTIAL",
        "CREDENTIALS",
        "APIKEY",
        "PRIVATEKEY",
        "SESSIONKEY",
        "AUTH",
        "COOKIE",
    }
)
# Word pairs that name a key: API_KEY, ACCESS_KEY, PRIVATE_KEY, SECRET_ACCESS_KEY...
_KEY_QUALIFIERS = frozenset({"API", "ACCESS", "PRIVATE", "SECRET", "SIGNING", "ENCRYPTION"})

_VALUE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("an AWS access key id", re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b")),
    ("a private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("a GitHub token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_\w{30,})")),
    ("a Slack token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    ("a Google API key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
    ("a Stripe secret key", re.compile(r"\b[sr]k_(?:live|test)_[0-9A-Za-z]{16,}")),
    ("a JSON Web Token", re.compile(r"\beyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]{8,}")),
    ("a URL with a password", re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@")),
)
_HEX = re.compile(r"[0-9a-fA-F]+")
_BASE64ISH = re.compile(r"[A-Za-z0-9+/=_-]+")
# Thresholds in the spirit of detect-secrets: hex strings carry at most 4 bits a character,
# base64 at most 6; random ones come close, words and paths do not.
_HEX_MIN_LEN, _HEX_MIN_BITS = 32, 3.0
_B64_MIN_LEN, _B64_MIN_BITS = 20, 4.2


def name_reason(name: str) -> str | None:
    """Why a variable name suggests a secret, or None."""
    words = name.upper().split("_")
    hit = next((w for w in words if w in _SECRET_WORDS), None)
    if hit is not None:
        return f"its name contains {hit}"
    for first, second in zip(words, words[1:], strict=False):
        if second == "KEY" and first in _KEY_QUALIFIERS:
            return f"its name contains {first}_KEY"
    return None


def value_reason(value: str) -> str | None:
    """Why a value looks like a secret (never quoting it), or None."""
    for label, pattern in _VALUE_PATTERNS:
        if pattern.search(value):
            return f"its value looks like {label}"
    return _entropy_reason(value)


def _entropy_reason(value: str) -> str | None:
    bits = shannon_bits(value)
    if len(value) >= _HEX_MIN_LEN and _HEX.fullmatch(value) and bits >= _HEX_MIN_BITS:
        return f"its value is a random-looking hex string ({bits:.1f} bits/char)"
    # Paths are long but made of words; a secret rarely starts with '/'.
    if value.startswith("/"):
        return None
    if len(value) >= _B64_MIN_LEN and _BASE64ISH.fullmatch(value) and bits >= _B64_MIN_BITS:
        return f"its value is a random-looking string ({bits:.1f} bits/char)"
    return None


def shannon_bits(value: str) -> float:
    """Shannon entropy of the characters of ``value``, in bits per character."""
    if not value:
        return 0.0
    counts = Counter(value)
    total = len(value)
    return -sum(n / total * math.log2(n / total) for n in counts.values())
