"""OpenCode's event streams: ``GET /event`` (``data: {id, type, properties}``) and
``GET /global/event`` (``data: {directory, project, payload}``).

Unlike the real OpenCode server, every frame has an SSE ``id:`` line (the event's sequence
number; ``server.connected`` and ``server.heartbeat`` carry the current one), so a client that
reconnects with ``Last-Event-ID`` gets exactly the events it missed. The keep-alive is a data
event, ``server.heartbeat`` every 10 s: never a comment line, which the Python SDK cannot parse
once it has seen an id (``docs/opencode-protocol.md`` section 6).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import Response

from agentplex.api.common.routing import Call, RouteTable
from agentplex.api.common.sse import sse_response
from agentplex.api.opencode.bodies import Located
from agentplex.api.opencode.caller import env_of
from agentplex.api.opencode.views import (
    global_sse_frame,
    parse_cursor,
    server_frame,
    sse_frame,
)
from agentplex.core.session_events import SessionEvent, SessionEventLog
from agentplex.core.session_model import new_id

routes = RouteTable(tags=["opencode"])

HEARTBEAT_SECONDS = 10.0


class _Cursor:
    __slots__ = ("seq",)

    def __init__(self, seq: int) -> None:
        self.seq = seq


def start_cursor(log: SessionEventLog, env_id: str, request: Request) -> int:
    """Where a subscriber starts: after its ``Last-Event-ID`` (or ``?after=``), else now. An id
    beyond the newest event (the server restarted since) replays everything still held."""
    newest = log.last_seq(env_id)
    after = parse_cursor(request.headers.get("last-event-id") or request.query_params.get("after"))
    if after is None:
        return newest
    return 0 if after > newest else after


def stream(call: Call, render: Callable[[SessionEvent], bytes], *, wrapped: bool) -> Response:
    """The SSE response for the caller's environment, rendering each event with ``render``."""
    services = call.services
    log: SessionEventLog = services.sessions.events
    env_id = env_of(call.principal, services)
    cursor = _Cursor(start_cursor(log, env_id, call.request))

    async def frames() -> AsyncIterator[bytes]:
        async with log.subscribe(env_id, after=cursor.seq) as events:
            yield server_frame(
                "server.connected", cursor.seq, wrapped=wrapped, frame_id=new_id("evt")
            )
            # what queued up while this client was being written to goes out in one write
            async for batch in events.batches():
                cursor.seq = batch[-1].seq
                yield b"".join([render(event) for event in batch])

    def heartbeat() -> bytes:
        return server_frame("server.heartbeat", cursor.seq, wrapped=wrapped, frame_id=new_id("evt"))

    keepalive = min(HEARTBEAT_SECONDS, services.settings.streams.keepalive_seconds)
    return sse_response(frames(), keepalive=keepalive, heartbeat=heartbeat)


@routes.get(
    "/event",
    summary="Server-sent events of every session: data {id, type, properties}; resume with "
    "Last-Event-ID",
    query=Located,
    media_type="text/event-stream",
)
async def events(call: Call) -> Response:
    return stream(call, sse_frame, wrapped=False)


@routes.get(
    "/global/event",
    summary="Server-sent events wrapped as {directory, project, payload}; resume with "
    "Last-Event-ID",
    query=Located,
    media_type="text/event-stream",
)
async def global_events(call: Call) -> Response:
    return stream(call, global_sse_frame, wrapped=True)
