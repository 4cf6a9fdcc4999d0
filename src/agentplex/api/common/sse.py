"""Server-sent events, shared by every surface: replay from a cursor, then follow live, with
keep-alive comments (or, for clients that choke on comments, data heartbeats), ending cleanly
when the client goes away or the server stops."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request

from agentplex.errors import BadRequest


@dataclass(frozen=True, slots=True)
class Event:
    """One SSE frame: ``id`` is the resume cursor, ``event`` the optional event name."""

    data: Any
    id: int | str | None = None
    event: str | None = None


_MAX_CURSOR = 2**63 - 1


def resume_cursor(request: Request, param: str = "after") -> int:
    """Where a subscriber resumes: the ``Last-Event-ID`` header, else the ``after`` query."""
    raw = request.headers.get("last-event-id") or request.query_params.get(param)
    if raw is None or raw == "":
        return 0
    try:
        cursor = int(raw)
    except ValueError:
        raise BadRequest(
            f"Invalid cursor {raw!r}: Last-Event-ID / {param} must be a whole number"
        ) from None
    if cursor < 0:
        raise BadRequest(f"Invalid cursor {cursor}: it must not be negative")
    if cursor > _MAX_CURSOR:  # no id is that large, and the databases' integers end there
        raise BadRequest(f"Invalid cursor {raw[:40]!r}: item ids stop at {_MAX_CURSOR}")
    return cursor


def sse_response(
    events: AsyncIterator[Event] | AsyncIterator[Event | bytes],
    *,
    keepalive: float,
    heartbeat: Callable[[], bytes] | None = None,
) -> EventSourceResponse:
    """Stream ``events`` as ``text/event-stream``. On server shutdown the stream ends cleanly,
    so the client sees a complete response and reconnects with its Last-Event-ID.

    Items that are ``bytes`` are complete frames, sent as they are (a surface that caches its
    encoding). With ``heartbeat``, an idle stream sends ``heartbeat()`` (a complete frame)
    every ``keepalive`` seconds instead of comment lines."""
    shutdown = anyio.Event()

    async def frames() -> AsyncIterator[ServerSentEvent | bytes]:
        iterator = aiter(events)
        stop: asyncio.Future[Any] = asyncio.ensure_future(shutdown.wait())
        following: asyncio.Future[Any] | None = None
        idle = keepalive if heartbeat is not None else None
        try:
            while True:
                if following is None:
                    following = asyncio.ensure_future(anext(iterator))
                done, _ = await asyncio.wait(
                    {following, stop}, timeout=idle, return_when=asyncio.FIRST_COMPLETED
                )
                if not done and heartbeat is not None:
                    yield heartbeat()  # the pending read goes on: nothing is lost
                    continue
                if not following.done():
                    return
                try:
                    event = following.result()
                except StopAsyncIteration:
                    return
                following = None
                if isinstance(event, bytes):
                    yield event
                    continue
                yield ServerSentEvent(
                    data=event.data if isinstance(event.data, str) else json.dumps(event.data),
                    id=None if event.id is None else str(event.id),
                    event=event.event,
                )
        finally:
            stop.cancel()
            if following is not None:
                following.cancel()
                # its outcome (often StopAsyncIteration, as the source closes) is nobody's
                following.add_done_callback(_retrieve)

    return EventSourceResponse(
        frames(),
        ping=0 if heartbeat is not None else keepalive,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        shutdown_event=shutdown,
        shutdown_grace_period=1.0,
    )


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Take a finished future's outcome, so asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()
