"""The Hopx surface: sandbox lifecycle (/v1/sandboxes, /v1/templates) and each sandbox's data
plane, in one route table."""

from __future__ import annotations

from agentplex.api.common.routing import RouteTable
from agentplex.api.hopx import dataplane, sandboxes, templates

routes = RouteTable(tags=["hopx"])
routes.include(sandboxes.routes)
routes.include(templates.routes)
routes.include(dataplane.routes)

__all__ = ["routes"]
