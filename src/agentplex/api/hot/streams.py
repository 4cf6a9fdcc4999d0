"""Hot's server-sent event streams: ``/v1/streams/{stream_id}/subscribe`` (GET or POST) and
``POST /v1/streams/subscribe-with-event`` (publish, then follow the new event's stream).

Each frame is ``id: <item id>`` (the resume cursor), ``event: <type>`` and ``data: <json>`` whose
``type`` is the event name; an idle stream gets a ``: keep-alive`` comment every
``streams.keepalive_seconds``. A subscriber resumes after ``Last-Event-ID`` (or ``?after=``), and
the response ends after the stream's ``stream:complete``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, Field
from starlette.responses import Response

from agentplex.api.common.routing import Call, RouteTable, dumps
from agentplex.api.common.sse import resume_cursor, sse_response
from agentplex.api.hot.events import PublishEvent, run_service
from agentplex.core.runs import Frame

routes = RouteTable(tags=["hot"])

_KEEPALIVE = b": keep-alive\n\n"


class StreamQuery(BaseModel):
    project: str | None = Field(None, description="Accepted for the SDK's sake; not a filter")
    after: int | None = Field(
        None,
        ge=0,
        le=2**63 - 1,
        description="Resume after this item id (the Last-Event-ID header wins)",
    )


def frame_bytes(frame: Frame) -> bytes:
    """One SSE frame: ``id:`` (when the item is stored), ``event:``, ``data:``."""
    head = b"id: %d\n" % frame.id if frame.id is not None else b""
    return head + b"event: " + frame.type.encode() + b"\ndata: " + dumps(frame.data) + b"\n\n"


def sse(call: Call, frames: AsyncIterator[Frame]) -> Response:
    """``frames`` as ``text/event-stream`` with keep-alive comments."""

    async def encoded() -> AsyncIterator[bytes]:
        async for frame in frames:
            yield frame_bytes(frame)

    keepalive = call.services.settings.streams.keepalive_seconds
    return sse_response(encoded(), keepalive=keepalive, heartbeat=lambda: _KEEPALIVE)


async def _subscribe(call: Call) -> Response:
    service = run_service(call)
    after = resume_cursor(call.request)
    # a stream of another environment is "not found" before any event is sent
    stream = await service.stream(call.principal.env_id, str(call.path_params["stream_id"]))
    return sse(call, service.follow_stream(stream, after))


_SUBSCRIBE = "/v1/streams/{stream_id}/subscribe"
_SSE: dict[str, Any] = {"query": StreamQuery, "media_type": "text/event-stream"}


@routes.get(_SUBSCRIBE, summary="Follow an event's stream (Hot, SSE)", **_SSE)
async def subscribe(call: Call) -> Response:
    """Stored items after the cursor, then new ones, until ``stream:complete``."""
    return await _subscribe(call)


@routes.post(_SUBSCRIBE, summary="Follow an event's stream (Hot, SSE; POST form)", **_SSE)
async def subscribe_post(call: Call) -> Response:
    return await _subscribe(call)


@routes.post(
    "/v1/streams/subscribe-with-event",
    summary="Publish an event and follow its stream from its first item (Hot, SSE)",
    body=PublishEvent,
    query=StreamQuery,
    media_type="text/event-stream",
)
async def subscribe_with_event(call: Call) -> Response:
    """The first frame is ``event:published`` (its ``stream_id`` and ``event_id``); the
    response ends after ``stream:complete``. A bad event is a 400 before any frame."""
    body: PublishEvent = call.body
    service = run_service(call)
    published = await service.publish(call.principal.env_id, body.event_type, body.event_data)
    return sse(call, service.follow_stream(service.event_stream(published.event)))
