"""OpenCode messages: prompt (waiting or async), history, shell commands, permission answers."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from agentplex.api.common.routing import Call, RouteTable
from agentplex.api.opencode.bodies import (
    ListMessages,
    Located,
    PermissionReply,
    PromptBody,
    ShellBody,
    to_prompt,
)
from agentplex.api.opencode.caller import env_of
from agentplex.api.opencode.views import message_view, prompt_answer

routes = RouteTable(tags=["opencode"])


@routes.get(
    "/session/{session_id}/message",
    summary="The session's messages, oldest first: [{info, parts}]",
    query=ListMessages,
)
async def list_messages(call: Call) -> list[dict[str, Any]]:
    q: ListMessages = call.query
    messages = await call.services.sessions.messages(
        env_of(call.principal, call.services), call.path_params["session_id"], limit=q.limit
    )
    return [message_view(m) for m in messages]


@routes.get(
    "/session/{session_id}/message/{message_id}",
    summary="One message: {info, parts}",
    query=Located,
)
async def get_message(call: Call) -> dict[str, Any]:
    message = await call.services.sessions.message(
        env_of(call.principal, call.services),
        call.path_params["session_id"],
        call.path_params["message_id"],
    )
    return message_view(message)


@routes.post(
    "/session/{session_id}/message",
    summary="Send a prompt and wait for the answer: {info, parts} (and info's fields at the "
    "top level). Body: OpenCode {parts, model, system} or HotPlex {prompt, system_prompt}",
    body=PromptBody,
    query=Located,
)
async def prompt(call: Call) -> dict[str, Any]:
    message = await call.services.sessions.prompt(
        env_of(call.principal, call.services), call.path_params["session_id"], to_prompt(call.body)
    )
    return prompt_answer(message)


@routes.post(
    "/session/{session_id}/prompt_async",
    summary="Send a prompt without waiting (204); the answer streams on /event",
    body=PromptBody,
    query=Located,
    status=204,
)
async def prompt_async(call: Call) -> Response:
    await call.services.sessions.prompt_async(
        env_of(call.principal, call.services), call.path_params["session_id"], to_prompt(call.body)
    )
    return Response(status_code=204)


@routes.post(
    "/session/{session_id}/shell",
    summary="Run a shell command in the session's sandbox (no model call): {info, parts}",
    body=ShellBody,
    query=Located,
)
async def shell(call: Call) -> dict[str, Any]:
    body: ShellBody = call.body
    message = await call.services.sessions.shell(
        env_of(call.principal, call.services),
        call.path_params["session_id"],
        body.command,
        agent=body.agent,
    )
    return prompt_answer(message)


@routes.post(
    "/session/{session_id}/permissions/{permission_id}",
    summary="Answer a tool permission request: once, always or reject",
    body=PermissionReply,
    query=Located,
)
async def reply_permission(call: Call) -> Any:
    body: PermissionReply = call.body
    await call.services.sessions.reply_permission(
        env_of(call.principal, call.services),
        call.path_params["session_id"],
        call.path_params["permission_id"],
        body.response,
    )
    return True
