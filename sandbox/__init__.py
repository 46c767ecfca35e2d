"""sandbox: run whitelisted data-tool scripts in short-lived, hardened Docker containers and
stream protocol-v1 frames. The library never configures logging: the CLI does.
"""

from __future__ import annotations

from loguru import logger

__version__ = "0.1.0"
__all__ = ["__version__"]

logger.disable("sandbox")
