"""PAR ``GET /logs?level&limit``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from agentplex.api.common.envelopes import par_ok
from agentplex.api.common.routing import Call, RouteTable
from agentplex.core.logs import build_query, caller_scope

routes = RouteTable(tags=["par"])


class ParLogsQuery(BaseModel):
    level: str = Field("INFO", description="Minimum level: DEBUG, INFO, WARN, ERROR")
    limit: int = Field(100, ge=0, le=10000, description="Maximum entries to return")
    agent_id: str | None = Field(None, description="Only entries of this agent")


@routes.get("/logs", summary="Recent log entries (PAR envelope)", query=ParLogsQuery)
async def logs(call: Call) -> dict[str, Any]:
    q: ParLogsQuery = call.query
    query = build_query(
        level=q.level,
        limit=q.limit,
        agent_id=q.agent_id,
        **caller_scope(call.principal.env_id, call.services.default_env_id),
    )
    entries = [{**e, "level": e["level"].upper()} for e in call.services.logs.query(query)]
    return par_ok(
        {"logs": entries, "total": len(entries), "level": q.level.upper()}, call.request_id
    )
