"""PRX ``/logs`` (query, or SSE with ``stream=true``) and ``/logs/stream``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from agentplex.api.common.deps import RuntimeDep
from agentplex.api.common.sse import Event, resume_cursor, sse_response
from agentplex.core.logs import LogQuery, build_query, public_entry
from agentplex.runtime import Runtime

router = APIRouter(tags=["prx"])

Level = Annotated[str, Query(description="Minimum level: trace, debug, info, warn, error")]
Module = Annotated[str | None, Query(description="Module name, e.g. agent or channel::telegram")]
Since = Annotated[
    str | None, Query(description="ISO 8601 time or a duration back from now (1h, 30m)")
]
Limit = Annotated[int, Query(ge=0, le=10000, description="Maximum entries to return")]
SessionId = Annotated[str | None, Query(description="Only entries of this session")]


@router.get("/logs", summary="Query recent log entries, or stream them with stream=true")
async def logs(
    runtime: RuntimeDep,
    request: Request,
    level: Level = "info",
    module: Module = None,
    since: Since = None,
    limit: Limit = 100,
    session_id: SessionId = None,
    stream: Annotated[bool, Query(description="Return a server-sent event stream")] = False,
) -> Any:
    query = build_query(
        level=level,
        module=module,
        since=since,
        session_id=session_id,
        limit=limit,
        default_since=None if stream else "1h",
    )
    if stream:
        return _stream(runtime, request, query)
    entries, total = runtime.logs.query(query)
    return {"entries": entries, "total": total}


@router.get("/logs/stream", summary="Follow log entries as server-sent events")
async def logs_stream(
    runtime: RuntimeDep,
    request: Request,
    level: Level = "info",
    module: Module = None,
    session_id: SessionId = None,
) -> Response:
    query = build_query(level=level, module=module, session_id=session_id)
    return _stream(runtime, request, query)


def _stream(runtime: Runtime, request: Request, query: LogQuery) -> Response:
    after = resume_cursor(request)

    async def events() -> AsyncIterator[Event]:
        async for item in runtime.logs.follow(query, after):
            yield Event(public_entry(item), id=item.id, event="log")

    return sse_response(events(), keepalive=runtime.settings.streams.keepalive_seconds)
