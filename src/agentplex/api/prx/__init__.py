"""The PRX gateway surface, at /api/v1 (and /api as an alias)."""

from __future__ import annotations

from agentplex.api.common.routing import RouteTable
from agentplex.api.prx import logs, sessions, status

routes = RouteTable(tags=["prx"])
routes.include(status.routes)
routes.include(logs.routes)
routes.include(sessions.routes)
