"""The Pixell Agent Runtime surface."""

from __future__ import annotations

from agentplex.api.common.routing import RouteTable
from agentplex.api.par import logs

routes = RouteTable(tags=["par"])
routes.include(logs.routes)
