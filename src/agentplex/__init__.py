"""agentplex: a self-hosted agent runtime speaking five agent-runtime APIs from one core."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("agentplex")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
