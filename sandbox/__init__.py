"""sandbox: run whitelisted data-tool scripts in short-lived, hardened Docker containers and
stream protocol-v1 frames. The library never logs on its own: the CLI configures
``sandbox.log.logger``; an embedding program calls ``sandbox.log.logger.enable()``.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
