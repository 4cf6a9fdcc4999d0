"""PAR ``GET /logs?level&limit``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from agentplex.api.common.deps import RequestIdDep, RuntimeDep
from agentplex.api.common.envelopes import par_ok
from agentplex.core.logs import build_query

router = APIRouter(tags=["par"])


@router.get("/logs", summary="Recent log entries (PAR envelope)")
async def logs(
    runtime: RuntimeDep,
    request_id: RequestIdDep,
    level: Annotated[str, Query(description="Minimum level: DEBUG, INFO, WARN, ERROR")] = "INFO",
    limit: Annotated[int, Query(ge=0, le=10000)] = 100,
    agent_id: Annotated[str | None, Query(description="Only entries of this agent")] = None,
) -> dict[str, Any]:
    query = build_query(level=level, limit=limit)
    entries, _total = runtime.logs.query(query)
    if agent_id:
        entries = [e for e in entries if e.get("agent_id") == agent_id]
    for entry in entries:
        entry["level"] = entry["level"].upper()
    return par_ok({"logs": entries, "total": len(entries), "level": level.upper()}, request_id)
