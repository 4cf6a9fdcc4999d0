"""The Hot surface (api.hot.dev): `{data, meta}` envelopes, errors `{error:{code,message,
request_id}}`. The caller's environment (`/v1/env`, `/v1/env/quota`), projects and their context
variables, builds, events, runs and their server-sent event streams."""

from __future__ import annotations

from agentplex.api.common.routing import RouteTable
from agentplex.api.hot import builds as hot_builds
from agentplex.api.hot import env
from agentplex.api.hot import events as hot_events
from agentplex.api.hot import projects as hot_projects
from agentplex.api.hot import runs as hot_runs
from agentplex.api.hot import streams as hot_streams

routes = RouteTable(tags=["hot"])
routes.include(env.routes)
routes.include(hot_projects.routes)
routes.include(hot_builds.routes)
routes.include(hot_events.routes)
routes.include(hot_runs.routes)
routes.include(hot_streams.routes)
