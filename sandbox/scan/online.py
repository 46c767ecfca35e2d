"""The optional online OSV service (``--online``): one batch query for every package, then the
full record of each advisory the offline database lacks. Offline first: an unreachable service is
detected with a single short-timeout request, reported, and never retried in a loop.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from .model import OnlineInfo
from .osv import ECOSYSTEM, Advisory, AdvisoryIndex, parse_record

DEFAULT_URL = "https://api.osv.dev"
TIMEOUT_S = 5.0
MAX_RECORDS = 500
BATCH = 1000


def _call(url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(  # noqa: S310 - the URL is the scanner's configured https/http base
        url, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310
        return json.loads(response.read())


def _batch_ids(base: str, packages: Sequence[tuple[str, str]]) -> set[str]:
    ids: set[str] = set()
    for start in range(0, len(packages), BATCH):
        chunk = packages[start : start + BATCH]
        queries = [{"package": {"name": n, "ecosystem": ECOSYSTEM}, "version": v} for n, v in chunk]
        answer = _call(f"{base}/v1/querybatch", {"queries": queries})
        for result in answer.get("results") or []:
            ids.update(str(v["id"]) for v in result.get("vulns") or [] if "id" in v)
    return ids


def augment(
    index: AdvisoryIndex, packages: Sequence[tuple[str, str]], base: str = DEFAULT_URL
) -> OnlineInfo:
    """Add the service's advisories for ``packages`` to ``index``; say how that went."""
    base = base.rstrip("/")
    known = {a.id for items in index.by_package.values() for a in items}
    if not packages:
        return OnlineInfo(status="unused", url=base, detail="no packages to look up")
    try:
        ids = sorted(_batch_ids(base, packages) - known)[:MAX_RECORDS]
        records = [_call(f"{base}/v1/vulns/{vuln_id}") for vuln_id in ids]
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return OnlineInfo(status="unreachable", url=base, detail=f"{type(exc).__name__}: {exc}")
    advisories: list[Advisory | None] = [parse_record(r) for r in records]
    for advisory in advisories:
        if advisory is not None:
            index.add(advisory)
    return OnlineInfo(status="used", url=base, detail=f"{len(ids)} advisory record(s) fetched")


class OnlineSession:
    """The service across the images of one scan: once unreachable, it is not asked again."""

    def __init__(self, url: str = DEFAULT_URL) -> None:
        self.url = url
        self.info = OnlineInfo(status="disabled", url=url)
        """``disabled`` until asked; ``unused`` when no image had packages to look up."""
        self._fetched = 0

    def augment(self, index: AdvisoryIndex, packages: Sequence[tuple[str, str]]) -> OnlineInfo:
        if self.info.status == "unreachable":
            return self.info
        if not packages:
            if self.info.status == "disabled":
                self.info = OnlineInfo(
                    status="unused", url=self.url, detail="no packages to look up"
                )
            return self.info
        info = augment(index, packages, self.url)
        if info.status == "used":
            self._fetched += int((info.detail or "0").split()[0])
            info = info.model_copy(update={"detail": f"{self._fetched} advisory record(s) fetched"})
        self.info = info
        return info
