"""``sandbox policy schema``: the JSON Schema of the policy format, generated from the pydantic
``Policy`` model, so the committed ``docs/policy.schema.json`` (which editors use through the
``yaml-language-server`` header of each policy) can be checked against the model. Pure.
"""

from __future__ import annotations

import json
from typing import Any

from ..policy import Policy

DIALECT = "https://json-schema.org/draft/2020-12/schema"
COMMITTED_PATH = "docs/policy.schema.json"


def policy_schema() -> dict[str, Any]:
    """The model's JSON Schema (validation mode), with the dialect it is written in."""
    return {"$schema": DIALECT, **Policy.model_json_schema()}


def render_schema() -> str:
    """The schema as committed: two-space indent, keys in model order, trailing newline."""
    return json.dumps(policy_schema(), indent=2, ensure_ascii=False) + "\n"
