"""The Hot surface (api.hot.dev): `{data, meta}` envelopes, errors `{error:{code,message,
request_id}}`. So far the caller's environment: `GET /v1/env` and `GET /v1/env/quota`."""

from __future__ import annotations

from agentplex.api.common.routing import RouteTable
from agentplex.api.hot import builds as hot_builds
from agentplex.api.hot import env
from agentplex.api.hot import projects as hot_projects

routes = RouteTable(tags=["hot"])
routes.include(env.routes)
routes.include(hot_projects.routes)
routes.include(hot_builds.routes)
