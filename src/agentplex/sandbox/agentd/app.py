"""The agentd ASGI app: every Hopx data-plane route, Hopx error envelopes, X-Request-ID."""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentplex.sandbox.agentd import compat, execute, files, stream, system, watch
from agentplex.sandbox.agentd.agent import Agent
from agentplex.sandbox.agentd.config import AgentConfig
from agentplex.sandbox.agentd.errors import AgentError, error_response, request_id


class _RequestId:
    """Echo (or mint) X-Request-ID on every HTTP answer; adopt first if just handed out."""

    def __init__(self, app: ASGIApp, agent: Agent) -> None:
        self.app = app
        self.agent = agent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.agent.adopt_if_pending()
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(Request(scope))
        scope.setdefault("state", {})["request_id"] = rid

        started = False

        async def _send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [h for h in message.get("headers", []) if h[0] != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, _send)
        except Exception as exc:
            # Answered here rather than by Starlette's outermost handler, which re-raises:
            # uvicorn then closes the connection, and the host's next request on it (kept
            # alive in its pool) would fail although the sandbox is fine.
            if started:
                raise  # half an answer went out: only closing the connection can say so
            logging.getLogger("agentplex.agentd").exception("%s failed", scope.get("path"))
            message = f"agentd failed: {type(exc).__name__}: {exc}"[:500]
            err = AgentError("INTERNAL_ERROR", message, 500)
            await error_response(err, rid)(scope, receive, send)


def _rid(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id") or request_id(request))


async def _agent_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AgentError)
    return error_response(exc, _rid(request))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "INVALID_REQUEST")
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return error_response(AgentError(code, message, exc.status_code), _rid(request))


def build_app(cfg: AgentConfig) -> Starlette:
    """The data-plane app of one sandbox."""
    app = Starlette(
        routes=[
            *system.routes,
            *execute.routes,
            *files.routes,
            *stream.routes,
            *watch.routes,
            *compat.routes,
        ],
        exception_handlers={
            AgentError: _agent_error,
            HTTPException: _http_error,
        },
    )
    app.state.agent = agent = Agent(cfg)
    app.add_middleware(_RequestId, agent=agent)
    return app


def error_json(code: str, message: str, status: int) -> JSONResponse:
    return error_response(AgentError(code, message, status), "")
