"""Core sessions, messages, parts and events rendered as the OpenCode 1.x server renders them
(``docs/opencode-protocol.md`` section 3 and 4). Times are epoch milliseconds.

Events are encoded once: the bytes of each rendering are cached on the event
(`SessionEvent.encoded`), so a hundred subscribers cost one JSON encoding, not a hundred.
"""

from __future__ import annotations

from typing import Any

import orjson

from agentplex import __version__
from agentplex.core.session_events import SessionEvent
from agentplex.core.session_model import Message, Part, Session

VERSION = __version__
DEFAULT_DIRECTORY = "/workspace"


def dumps(data: Any) -> bytes:
    """Compact JSON bytes (orjson)."""
    return orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS)


def session_view(session: Session) -> dict[str, Any]:
    """OpenCode's Session: ``{id, slug, projectID, directory, path, cost, tokens, title,
    version, time{created, updated}}`` plus ``parentID``, ``agent``/``model``, ``permission``
    and ``metadata`` when set."""
    view: dict[str, Any] = {
        "id": session.id,
        "slug": session.slug,
        "projectID": session.project_id,
        "directory": session.directory,
        "path": session.directory.lstrip("/"),
    }
    if session.parent_id:
        view["parentID"] = session.parent_id
    view["cost"] = session.cost
    view["tokens"] = session.tokens.to_json()
    view["title"] = session.title
    if session.model is not None:
        view["agent"] = "build"
        view["model"] = {
            "id": session.model.model_id,
            "providerID": session.model.provider_id,
            "variant": "default",
        }
    if session.turn_count:
        # OpenCode's file-change summary of the session; agentplex tracks no diffs yet
        view["summary"] = {"additions": 0, "deletions": 0, "files": 0}
    view["version"] = VERSION
    view["time"] = {"created": session.created, "updated": session.updated}
    if session.permission:
        view["permission"] = [
            {"permission": tool, "pattern": "*", "action": action}
            for tool, action in session.permission.items()
        ]
    if session.metadata:
        view["metadata"] = session.metadata
    return view


def hotplex_session_view(session: Session) -> dict[str, Any]:
    """``POST /session``'s answer: the bare Session (OpenCode) plus the same fields under
    ``info`` (the HotPlex page)."""
    view = session_view(session)
    return {**view, "info": dict(view)}


def message_info(message: Message) -> dict[str, Any]:
    """A message's ``info``: UserMessage or AssistantMessage."""
    if message.role == "user":
        info: dict[str, Any] = {
            "id": message.id,
            "sessionID": message.session_id,
            "role": "user",
            "time": {"created": message.created},
            "summary": {"diffs": []},
            "agent": message.agent,
        }
        if message.model is not None:
            info["model"] = {
                "providerID": message.model.provider_id,
                "modelID": message.model.model_id,
            }
        if message.system:
            info["system"] = message.system
        return info
    time: dict[str, Any] = {"created": message.created}
    if message.completed is not None:
        time["completed"] = message.completed
    info = {
        "id": message.id,
        "sessionID": message.session_id,
        "role": "assistant",
        "time": time,
        "parentID": message.parent_id or "",
        "modelID": message.model.model_id if message.model else "",
        "providerID": message.model.provider_id if message.model else "",
        "mode": message.agent,
        "agent": message.agent,
        "path": {"cwd": message.cwd, "root": "/"},
        "cost": message.cost,
        # `total` only once the step finished, as OpenCode does
        "tokens": message.tokens.to_json(with_total=message.finish is not None),
    }
    if message.finish:
        info["finish"] = message.finish
    if message.error:
        info["error"] = message.error
    return info


def part_view(part: Part) -> dict[str, Any]:
    """A Part: ``{id, sessionID, messageID, type, ...its type's fields}``."""
    return {
        "id": part.id,
        "sessionID": part.session_id,
        "messageID": part.message_id,
        "type": part.type,
        **part.data,
    }


def message_view(message: Message) -> dict[str, Any]:
    """``{info, parts}`` (``GET /session/{id}/message`` items)."""
    return {"info": message_info(message), "parts": [part_view(p) for p in message.parts]}


def prompt_answer(message: Message) -> dict[str, Any]:
    """``POST /session/{id}/message``'s answer: ``{info, parts}`` (OpenCode 1.x) plus the
    assistant message's fields at the top level (the pre-1.x Python SDK reads those)."""
    info = message_info(message)
    return {**info, "info": info, "parts": [part_view(p) for p in message.parts]}


def event_properties(event: SessionEvent) -> dict[str, Any]:
    """The ``properties`` of an event, as OpenCode names them."""
    kind = event.type
    sid = event.session_id
    if kind in ("session.created", "session.updated", "session.deleted"):
        props: dict[str, Any] = {"sessionID": sid}
        if event.session is not None:
            props["info"] = session_view(event.session)
        return props
    if kind == "session.status":
        return {"sessionID": sid, "status": event.status or {"type": "idle"}}
    if kind == "session.error":
        return {"sessionID": sid, "error": event.error or {}}
    if kind == "message.updated" and event.message is not None:
        return {"sessionID": sid, "info": message_info(event.message)}
    if kind == "message.removed" and event.message is not None:
        return {"sessionID": sid, "messageID": event.message.id}
    if kind == "message.part.updated" and event.part is not None:
        props = {"sessionID": sid, "part": part_view(event.part), "time": event.time}
        if event.delta is not None:
            props["delta"] = event.delta  # the v1 SDK's `delta?` (1.x servers send .delta)
        return props
    if kind == "message.part.removed" and event.part is not None:
        return {"sessionID": sid, "messageID": event.part.message_id, "partID": event.part.id}
    if kind == "message.part.delta" and event.part is not None:
        return {
            "sessionID": sid,
            "messageID": event.part.message_id,
            "partID": event.part.id,
            "field": event.field,
            "delta": event.delta or "",
        }
    props = {"sessionID": sid} if sid is not None else {}
    props.update(event.extra or {})
    if event.error is not None and "error" not in props:
        props["error"] = event.error
    return props


def event_id(seq: int) -> str:
    """The ``id`` inside an event's JSON: ``evt_`` + the event's sequence number in hex (so it
    sorts like OpenCode's ids, and `parse_cursor` reads it back)."""
    return f"evt_{seq:012x}"


def parse_cursor(raw: str | None) -> int | None:
    """A ``Last-Event-ID``: the SSE id (the sequence number) or the JSON ``id`` (``evt_...``);
    None when absent or not one of these (then the stream starts live, as OpenCode's does)."""
    if not raw:
        return None
    raw = raw.strip()
    try:
        value = int(raw[4:], 16) if raw.startswith("evt_") else int(raw)
    except ValueError:
        return None
    return value if value >= 0 else None


def event_properties_bytes(event: SessionEvent) -> bytes:
    """The JSON of the event's properties (cached on the event)."""
    cached = event.encoded
    if cached is None:
        # orjson's bytes keep their 4 KiB working buffer: a tight copy is what the ring holds
        cached = event.encoded = memoryview(dumps(event_properties(event))).tobytes()
    return cached


def _payload_bytes(event: SessionEvent) -> bytes:
    # {"id", "type", "properties"} built around the cached properties: one encoding per event
    head = b'{"id":"' + event_id(event.seq).encode() + b'","type":' + dumps(event.type)
    return head + b',"properties":' + event_properties_bytes(event) + b"}"


def sse_frame(event: SessionEvent) -> bytes:
    """The ``/event`` frame: ``id: <seq>`` and ``data: {id, type, properties}`` (built around
    the cached properties: an event's JSON is kept once, whatever streams it goes out on)."""
    return b"id: %d\ndata: " % event.seq + _payload_bytes(event) + b"\n\n"


def global_sse_frame(event: SessionEvent) -> bytes:
    """The ``/global/event`` frame: ``data: {directory, project, payload}``."""
    directory = event.session.directory if event.session is not None else DEFAULT_DIRECTORY
    project = event.session.project_id if event.session is not None else "global"
    head = b'{"directory":' + dumps(directory) + b',"project":' + dumps(project)
    return b"id: %d\ndata: " % event.seq + head + b',"payload":' + _payload_bytes(event) + b"}\n\n"


def server_frame(kind: str, cursor: int, *, wrapped: bool, frame_id: str) -> bytes:
    """``server.connected`` / ``server.heartbeat``: a data event (never an SSE comment: the
    Python SDK fails on those once it has seen an id), carrying the current cursor."""
    payload: dict[str, Any] = {"id": frame_id, "type": kind, "properties": {}}
    body = dumps({"payload": payload} if wrapped else payload)
    return b"id: %d\ndata: " % cursor + body + b"\n\n"


def ws_frame(event: SessionEvent, request_id: str | int | None) -> bytes:
    """A HotPlex WebSocket message for an event: ``{event, data, request_id}`` where ``data``
    is the OpenCode event's properties."""
    return (
        b'{"event":'
        + dumps(event.type)
        + b',"data":'
        + event_properties_bytes(event)
        + b',"request_id":'
        + dumps(request_id)
        + b"}"
    )
