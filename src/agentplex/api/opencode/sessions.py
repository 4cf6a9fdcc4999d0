"""OpenCode ``/session``: create, list, get, rename, delete, status, abort, children, fork."""

from __future__ import annotations

from typing import Any

from agentplex.api.common.routing import Call, RouteTable
from agentplex.api.opencode.bodies import (
    CreateSession,
    ForkBody,
    ListSessions,
    Located,
    UpdateSession,
)
from agentplex.api.opencode.caller import env_of
from agentplex.api.opencode.views import hotplex_session_view, session_view
from agentplex.core.session_model import ModelRef
from agentplex.core.sessions import shown_id
from agentplex.errors import BadRequest, SessionNotFound, SessionTerminated

routes = RouteTable(tags=["opencode"])


@routes.post(
    "/session",
    summary="Create a session (the Session, plus the same fields under `info` for HotPlex)",
    body=CreateSession,
    query=Located,
)
async def create(call: Call) -> dict[str, Any]:
    body: CreateSession = call.body
    model = None
    if body.model is not None:
        model_id = body.model.id or body.model.modelID
        if model_id:
            model = ModelRef(body.model.providerID, model_id)
    session = await call.services.sessions.create(
        env_of(call.principal, call.services),
        title=body.title,
        parent_id=body.parentID,
        channel="opencode",
        metadata=body.metadata,
        model=model,
        permission=_permission(body.permission),
    )
    return hotplex_session_view(session)


def _permission(raw: list[dict[str, Any]] | dict[str, Any] | None) -> dict[str, str] | None:
    """OpenCode's ``[{permission, pattern, action}]`` (or ``{tool: action}``) as
    ``{tool: action}``; BadRequest for an action other than allow, ask or deny."""
    if raw is None:
        return None
    pairs = (
        [(r.get("permission"), r.get("action")) for r in raw]
        if isinstance(raw, list)
        else list(raw.items())
    )
    rules: dict[str, str] = {}
    for tool, action in pairs:
        if not isinstance(tool, str) or action not in ("allow", "ask", "deny"):
            raise BadRequest(
                "Invalid permission: use [{permission: <tool or *>, action: allow|ask|deny}]"
            )
        rules[tool] = action
    return rules


@routes.get("/session", summary="List sessions, newest first", query=ListSessions)
async def list_sessions(call: Call) -> list[dict[str, Any]]:
    q: ListSessions = call.query
    sessions, _total = await call.services.sessions.list(
        env_of(call.principal, call.services),
        roots=q.roots,
        search=q.search,
        limit=q.limit,
        offset=q.start or 0,
    )
    return [session_view(s) for s in sessions]


# before /session/{session_id}: Starlette matches routes in order
@routes.get(
    "/session/status",
    summary="Sessions that are busy or retrying: {sessionID: {type}} (idle ones are absent)",
    query=Located,
)
async def status(call: Call) -> dict[str, Any]:
    result: dict[str, Any] = call.services.sessions.status(env_of(call.principal, call.services))
    return result


@routes.get("/session/{session_id}", summary="Get a session", query=Located)
async def get(call: Call) -> dict[str, Any]:
    session_id = call.path_params["session_id"]
    session = await call.services.sessions.get(env_of(call.principal, call.services), session_id)
    if session.status == "terminated":
        # OpenCode forgets a deleted session (PRX still shows it as terminated)
        raise SessionNotFound(f"Session not found: {shown_id(session_id)}")
    return session_view(session)


@routes.patch(
    "/session/{session_id}", summary="Rename a session", body=UpdateSession, query=Located
)
async def update(call: Call) -> dict[str, Any]:
    body: UpdateSession = call.body
    session = await call.services.sessions.update(
        env_of(call.principal, call.services),
        call.path_params["session_id"],
        title=body.title,
        metadata=body.metadata,
    )
    return session_view(session)


@routes.delete(
    "/session/{session_id}",
    summary="Delete a session: stops its turn, reclaims its sandbox; answers true",
    query=Located,
)
async def delete(call: Call) -> Any:
    session_id = call.path_params["session_id"]
    try:
        await call.services.sessions.delete(env_of(call.principal, call.services), session_id)
    except SessionTerminated:
        raise SessionNotFound(f"Session not found: {shown_id(session_id)}") from None
    return True


@routes.post(
    "/session/{session_id}/abort",
    summary="Stop the running turn (true, also for an idle or unknown session)",
    query=Located,
)
async def abort(call: Call) -> Any:
    await call.services.sessions.abort(
        env_of(call.principal, call.services), call.path_params["session_id"]
    )
    return True


@routes.get(
    "/session/{session_id}/children", summary="Sessions created with this parent", query=Located
)
async def children(call: Call) -> list[dict[str, Any]]:
    sessions = await call.services.sessions.children(
        env_of(call.principal, call.services), call.path_params["session_id"]
    )
    return [session_view(s) for s in sessions]


@routes.post(
    "/session/{session_id}/fork",
    summary="A new session holding copies of this one's messages (up to messageID)",
    body=ForkBody,
    query=Located,
)
async def fork(call: Call) -> dict[str, Any]:
    body: ForkBody = call.body
    session = await call.services.sessions.fork(
        env_of(call.principal, call.services), call.path_params["session_id"], body.messageID
    )
    return session_view(session)
