"""Hot's environment routes: the environment the caller's key (or JWT) belongs to."""

from __future__ import annotations

from typing import Any

from agentplex.api.common.envelopes import hot_data
from agentplex.api.common.routing import Call, RouteTable
from agentplex.core import environments

routes = RouteTable(tags=["hot"])


@routes.get("/v1/env", summary="The caller's environment (Hot)")
async def get_env(call: Call) -> dict[str, Any]:
    """``{data: {env_id, org_id, name, active}, meta}``."""
    env = await environments.describe(call.services.db, call.principal.env_id)
    data = {"env_id": env.id, "org_id": env.org_id, "name": env.name, "active": env.active}
    return hot_data(data, call.request_id)


@routes.get("/v1/env/quota", summary="The caller's environment's quota (Hot)")
async def get_quota(call: Call) -> dict[str, Any]:
    """``{data: {compute_used_percent, storage_used_percent, requests_per_hour,
    max_concurrent_runs}, meta}``."""
    quota = await environments.quota(call.services.db, call.principal.env_id)
    return hot_data(quota, call.request_id)
