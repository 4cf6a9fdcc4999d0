"""Which of the five protocol surfaces a path belongs to (decides the error envelope)."""

from __future__ import annotations

from enum import StrEnum


class Surface(StrEnum):
    OPENCODE = "opencode"
    HOT = "hot"
    PRX = "prx"
    HOPX = "hopx"  # the control plane: /v1/sandboxes, /v1/templates
    HOPX_DATA = "hopx_data"  # each sandbox's data plane
    PAR = "par"
    SHARED = "shared"


_BY_FIRST_SEGMENT = {
    "api": Surface.PRX,
    "agent": Surface.PAR,
    "agents": Surface.PAR,
    "platform": Surface.PAR,
    "logs": Surface.PAR,
    "session": Surface.OPENCODE,
    "event": Surface.OPENCODE,
    "global": Surface.OPENCODE,
    "config": Surface.OPENCODE,
    "provider": Surface.OPENCODE,
    "file": Surface.OPENCODE,
    "ws": Surface.OPENCODE,
    # the Hopx data plane: /sandboxes/{id}/... and, for WebSockets, the root of the host
    "sandboxes": Surface.HOPX_DATA,
    "execute": Surface.HOPX_DATA,
    "commands": Surface.HOPX_DATA,
    "files": Surface.HOPX_DATA,
    "env": Surface.HOPX_DATA,
    "info": Surface.HOPX_DATA,
    "terminal": Surface.HOPX_DATA,
}
_HOPX_CONTROL = {"sandboxes", "templates"}


def surface_for(path: str) -> Surface:
    """The surface whose reference documents ``path``."""
    parts = path.split("/", 3)
    first = parts[1] if len(parts) > 1 else ""
    if first == "v1":
        return Surface.HOPX if len(parts) > 2 and parts[2] in _HOPX_CONTROL else Surface.HOT
    if first == "metrics" and len(parts) > 2 and parts[2] == "snapshot":
        return Surface.HOPX_DATA
    if path == "/agent":  # OpenCode's agent list; PAR owns /agent/... and /agents
        return Surface.OPENCODE
    return _BY_FIRST_SEGMENT.get(first, Surface.SHARED)


_DATA_PLANE = frozenset({"sandboxes", "execute", "commands", "files", "env", "info", "terminal"})


def is_data_plane(path: str) -> bool:
    """Whether ``path`` is a sandbox data-plane path (where sandbox tokens are accepted)."""
    parts = path.split("/", 3)
    first = parts[1] if len(parts) > 1 else ""
    return first in _DATA_PLANE or (
        first == "metrics" and len(parts) > 2 and parts[2] == "snapshot"
    )
