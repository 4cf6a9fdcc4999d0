"""Who is calling, on the OpenCode/HotPlex surface: the environment a request acts in."""

from __future__ import annotations

from agentplex.core.auth import Principal
from agentplex.services import Services


def env_of(principal: Principal, services: Services) -> str:
    """The caller's environment; anonymous callers (no keys configured) use the default one."""
    return principal.env_id or services.default_env_id
