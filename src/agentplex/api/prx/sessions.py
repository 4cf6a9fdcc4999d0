"""PRX ``/sessions``: create, list, inspect and terminate agent sessions, and talk to them.

Every route is a thin call into `SessionService` (``call.services.sessions``): a session made
here (``sess_...``) is the same session on the OpenCode surface (``/session/{id}``), with the
same history, and the reverse. Times are ISO 8601 UTC with a ``Z``.

Errors (PRX's ``{error: {code, message, details}}``, mapped in ``api/common/errors.py``):
unknown session 404, terminated session 409 (deleting it again, or sending it a message),
bad query or body 400. Rate-limit groups: ``sessions_write`` for POST/DELETE, ``sessions_read``
for GET (``api/common/ratelimit.py`` picks them from the path).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, BaseModel, Field, StrictStr
from starlette.responses import Response

from agentplex.api.common.routing import Call, RouteTable
from agentplex.core.clock import iso
from agentplex.core.session_model import Message, ModelRef, Part, Session, Tokens
from agentplex.core.sessions import Prompt, PromptPart
from agentplex.errors import BadRequest, SessionNotFound

routes = RouteTable(tags=["prx"])

_MAX_LIMIT = 1000
_MAX_OFFSET = 2**31 - 1
_MAX_ID = 256


def _no_nul(value: str) -> str:
    # no database text column (PostgreSQL's above all) can hold a NUL
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    return value


_Text = Annotated[StrictStr, AfterValidator(_no_nul)]


class CreateSession(BaseModel):
    channel: _Text | None = Field(
        None, min_length=1, max_length=128, description='Channel name (default "api")'
    )
    user_id: _Text | None = Field(
        None, min_length=1, max_length=256, description="The user the session belongs to"
    )
    metadata: dict[str, Any] | None = Field(None, description="Any JSON object; returned as given")


class ListSessions(BaseModel):
    # The page's default: only active sessions. A session quiet for `agent.idle_after_secs`
    # is idle and needs status=idle to be listed; terminated ones need status=terminated.
    status: Literal["active", "idle", "terminated"] = Field(
        "active", description="active (default), idle or terminated"
    )
    channel: Annotated[str, AfterValidator(_no_nul)] | None = Field(
        None, max_length=128, description="Only this channel"
    )
    limit: int = Field(50, ge=0, le=_MAX_LIMIT, description="Maximum sessions to return")
    offset: int = Field(0, ge=0, le=_MAX_OFFSET, description="Sessions to skip (newest first)")


class SendMessage(BaseModel):
    message: _Text | None = Field(
        None,
        validation_alias=AliasChoices("message", "content", "text"),
        description="What the user says (also accepted as `content` or `text`)",
    )
    model: _Text | None = Field(
        None, max_length=256, description="Model for this turn as provider:model"
    )


class ListMessages(BaseModel):
    limit: int | None = Field(
        None, ge=0, le=_MAX_LIMIT, description="Maximum messages to return (default all)"
    )
    offset: int = Field(0, ge=0, le=_MAX_OFFSET, description="Messages to skip (oldest first)")


@routes.post("/sessions", summary="Create an agent session", body=CreateSession, status=201)
async def create(call: Call) -> dict[str, Any]:
    body: CreateSession = call.body
    session = await call.services.sessions.create(
        call.principal.env_id,
        channel=body.channel or "api",
        user_id=body.user_id,
        metadata=body.metadata,
        id_prefix="sess",
    )
    return _detail(session)


@routes.get(
    "/sessions",
    summary='List sessions (status "active" unless asked), newest first',
    query=ListSessions,
)
async def list_sessions(call: Call) -> dict[str, Any]:
    q: ListSessions = call.query
    sessions, total = await call.services.sessions.list(
        call.principal.env_id, status=q.status, channel=q.channel, limit=q.limit, offset=q.offset
    )
    return {"sessions": [_summary(s) for s in sessions], "total": total}


@routes.get("/sessions/{session_id}", summary="A session with its turn count and token usage")
async def get(call: Call) -> dict[str, Any]:
    session = await call.services.sessions.get(call.principal.env_id, _session_id(call))
    return _detail(session)


@routes.delete(
    "/sessions/{session_id}",
    summary="Terminate a session: stops its turn and reclaims its sandbox",
    status=204,
)
async def delete(call: Call) -> Response:
    await call.services.sessions.delete(call.principal.env_id, _session_id(call))
    return Response(status_code=204)


@routes.post(
    "/sessions/{session_id}/message",
    summary="Send a message and wait for the agent's reply",
    body=SendMessage,
)
async def send_message(call: Call) -> dict[str, Any]:
    body: SendMessage = call.body
    if body.message is None or not body.message.strip():
        raise BadRequest(
            'The message is empty: send {"message": "<text>"}.', details=["message: empty"]
        )
    env_id, session_id = call.principal.env_id, _session_id(call)
    service = call.services.sessions
    prompt = Prompt(parts=[PromptPart(type="text", text=body.message)], model=_model(body.model))
    last = await service.prompt(env_id, session_id, prompt)
    history = await service.messages(env_id, session_id)
    turn = [m for m in history if m.role == "assistant" and m.parent_id == last.parent_id]
    if not any(m.id == last.id for m in turn):
        turn.append(last)
    session = await service.get(env_id, session_id)
    usage = Tokens()
    for step in turn:
        usage.add(step.tokens)
    return {
        "reply": _reply(turn),
        "session_id": session.id,
        "message_id": last.id,
        "user_message_id": last.parent_id,
        "status": session.status,
        "turn_count": session.turn_count,
        "token_usage": _usage(usage),
        "tool_calls": [_tool_call(p) for m in turn for p in m.parts if p.type == "tool"],
        "finish": last.finish,
        "error": _error(last),
        "created_at": _iso(last.created),
        "completed_at": _iso(last.completed),
    }


@routes.get(
    "/sessions/{session_id}/messages",
    summary="A session's messages, oldest first, with their parts",
    query=ListMessages,
)
async def list_messages(call: Call) -> dict[str, Any]:
    q: ListMessages = call.query
    history = await call.services.sessions.messages(call.principal.env_id, _session_id(call))
    end = None if q.limit is None else q.offset + q.limit
    return {"messages": [_message(m) for m in history[q.offset : end]], "total": len(history)}


def _session_id(call: Call) -> str:
    """The path's session id; one no session can have (NUL, absurd length) is not found
    without asking the database."""
    session_id: str = call.path_params["session_id"]
    if len(session_id) > _MAX_ID or "\x00" in session_id:
        raise SessionNotFound(f"Session not found: {session_id[:64]!r}")
    return session_id


# -- rendering ---------------------------------------------------------------------------------


def _iso(ms: int | None) -> str | None:
    """Epoch milliseconds as ISO 8601 UTC with a Z."""
    if ms is None:
        return None
    return iso(datetime.fromtimestamp(ms / 1000, UTC))


def _summary(session: Session) -> dict[str, Any]:
    """A session as ``GET /sessions`` lists it."""
    return {
        "id": session.id,
        "channel": session.channel,
        "user_id": session.user_id,
        "status": session.status,
        "created_at": _iso(session.created),
        "last_activity": _iso(session.last_activity or session.updated or session.created),
    }


def _detail(session: Session) -> dict[str, Any]:
    """A session as ``GET /sessions/{id}`` shows it (and ``POST /sessions`` answers)."""
    return {
        **_summary(session),
        "turn_count": session.turn_count,
        "token_usage": _usage(session.tokens),
        "metadata": session.metadata,
        "title": session.title,
        "model": str(session.model) if session.model else None,
        "parent_id": session.parent_id,
        "terminated_at": _iso(session.terminated),
    }


def _usage(tokens: Tokens) -> dict[str, int]:
    return {"input": tokens.input, "output": tokens.output}


def _model(value: str | None) -> ModelRef | None:
    """``provider:model`` (or OpenCode's ``provider/model``) as a ModelRef."""
    if value is None:
        return None
    for separator in (":", "/"):
        provider, _, model = value.partition(separator)
        if provider.strip() and model.strip():
            return ModelRef(provider.strip(), model.strip())
    raise BadRequest(
        f"model must be provider:model (e.g. openai:gpt-4o-mini), not {value!r}",
        details=["model: expected provider:model"],
    )


def _reply(turn: list[Message]) -> str:
    """The assistant's visible text over the turn's model steps."""
    return "\n\n".join(text for text in (m.text() for m in turn) if text)


def _error(message: Message) -> dict[str, Any] | None:
    if not message.error:
        return None
    data = message.error.get("data") or {}
    return {"name": message.error.get("name"), "message": data.get("message")}


def _tool_call(part: Part) -> dict[str, Any]:
    state = part.data.get("state") or {}
    call: dict[str, Any] = {
        "id": part.data.get("callID"),
        "tool": part.data.get("tool"),
        "status": state.get("status"),
        "input": state.get("input"),
        "output": state.get("output"),
    }
    if state.get("error") is not None:
        call["error"] = state["error"]
    return call


def _part(part: Part) -> dict[str, Any]:
    """A part with its OpenCode fields (``text``, ``tool``, ``state``, ``time``, ...)."""
    return {**part.data, "id": part.id, "type": part.type}


def _message(message: Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "role": message.role,
        "content": message.text(),
        "created_at": _iso(message.created),
        "completed_at": _iso(message.completed),
        "parent_id": message.parent_id,
        "model": str(message.model) if message.model else None,
        "token_usage": _usage(message.tokens),
        "finish": message.finish,
        "error": _error(message),
        "parts": [_part(p) for p in message.parts],
    }
