"""Image scanning: one module per concept (Dockerfile lint, image config, filesystem, Python
package inventory and drift, OSV advisories, CycloneDX SBOM, SARIF), orchestrated by
``runner``. Nothing here imports docker: the engine is reached through ``runner.ImageSource``,
which ``sandbox.images`` implements.
"""

from __future__ import annotations

from .model import FailOn, ScanReport, Severity
from .runner import ImageSource, ScanOptions, ScanTarget

__all__ = ["FailOn", "ImageSource", "ScanOptions", "ScanReport", "ScanTarget", "Severity"]
