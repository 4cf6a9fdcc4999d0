"""Hot's events: ``POST /v1/events`` (publish: the event and one queued run per matching
handler, or one ``call`` run for ``hot:call``), the list, one event and the runs it started."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, StrictStr

from agentplex.api.common.envelopes import hot_data, hot_list
from agentplex.api.common.routing import Call, RouteTable
from agentplex.api.hot.projects import Page
from agentplex.api.hot.views import event_view, run_view
from agentplex.core.runs import RunService

routes = RouteTable(tags=["hot"])


class PublishEvent(BaseModel):
    event_type: StrictStr | None = Field(
        None, description='The event\'s type, e.g. "user.signup"; "hot:call" calls a function'
    )
    event_data: Any = Field(
        None,
        description='Any JSON value; for hot:call {"fn": "::module::path/fn", "args": [...]}',
    )


def run_service(call: Call) -> RunService:
    services: Any = call.services
    service: RunService = services.runs
    return service


def _event_id(call: Call) -> str:
    return str(call.path_params["event_id"])


@routes.post("/v1/events", summary="Publish an event (Hot)", body=PublishEvent, status=201)
async def publish(call: Call) -> dict[str, Any]:
    """201 with the event; its runs are queued in the same transaction."""
    body: PublishEvent = call.body
    published = await run_service(call).publish(
        call.principal.env_id, body.event_type, body.event_data
    )
    return hot_data(event_view(published.event), call.request_id)


@routes.get("/v1/events", summary="List events, newest first (Hot)", query=Page)
async def list_events(call: Call) -> dict[str, Any]:
    page: Page = call.query
    found, total = await run_service(call).events(
        call.principal.env_id, limit=page.limit, offset=page.offset
    )
    return hot_list(
        [event_view(e) for e in found],
        total=total,
        limit=page.limit,
        offset=page.offset,
        request_id=call.request_id,
    )


@routes.get("/v1/events/{event_id}", summary="Get an event (Hot)")
async def get_event(call: Call) -> dict[str, Any]:
    event = await run_service(call).event(call.principal.env_id, _event_id(call))
    return hot_data(event_view(event), call.request_id)


@routes.get("/v1/events/{event_id}/runs", summary="The runs an event started (Hot)", query=Page)
async def event_runs(call: Call) -> dict[str, Any]:
    """Oldest first."""
    page: Page = call.query
    found = await run_service(call).by_event(call.principal.env_id, _event_id(call))
    return hot_list(
        [run_view(r) for r in found[page.offset : page.offset + page.limit]],
        total=len(found),
        limit=page.limit,
        offset=page.offset,
        request_id=call.request_id,
    )
