"""PRX ``/logs`` (query, or SSE with ``stream=true``) and ``/logs/stream``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response

from agentplex.api.common.routing import Call, RouteTable
from agentplex.api.common.sse import Event, resume_cursor, sse_response
from agentplex.core.logs import LogQuery, build_query, caller_scope, public_entry
from agentplex.services import Services

routes = RouteTable(tags=["prx"])


class StreamQuery(BaseModel):
    level: str = Field("info", description="Minimum level: trace, debug, info, warn, error")
    module: str | None = Field(None, description="Module, e.g. agent or channel::telegram")
    session_id: str | None = Field(None, description="Only entries of this session")


class LogsQuery(StreamQuery):
    since: str | None = Field(
        None, description="ISO 8601 time or a duration back from now (1h, 30m); default 1h"
    )
    limit: int = Field(100, ge=0, le=10000, description="Maximum entries to return")
    stream: bool = Field(False, description="Return a server-sent event stream instead")


@routes.get(
    "/logs", summary="Query recent log entries, or stream them with stream=true", query=LogsQuery
)
async def logs(call: Call) -> Any:
    q: LogsQuery = call.query
    query = build_query(
        level=q.level,
        module=q.module,
        since=q.since,
        session_id=q.session_id,
        limit=q.limit,
        default_since=None if q.stream else "1h",
        **caller_scope(call.principal.env_id, call.services.default_env_id),
    )
    if q.stream:
        return _stream(call.services, call.request, query)
    entries = call.services.logs.query(query)
    return {"entries": entries, "total": len(entries)}


@routes.get(
    "/logs/stream",
    summary="Follow log entries as server-sent events (resume with Last-Event-ID)",
    query=StreamQuery,
    media_type="text/event-stream",
)
async def logs_stream(call: Call) -> Response:
    q: StreamQuery = call.query
    query = build_query(
        level=q.level,
        module=q.module,
        session_id=q.session_id,
        **caller_scope(call.principal.env_id, call.services.default_env_id),
    )
    return _stream(call.services, call.request, query)


def _stream(services: Services, request: Request, query: LogQuery) -> Response:
    after = resume_cursor(request)

    async def events() -> AsyncIterator[Event]:
        async for item in services.logs.follow(query, after):
            yield Event(public_entry(item), id=item.id, event="log")

    return sse_response(events(), keepalive=services.settings.streams.keepalive_seconds)
