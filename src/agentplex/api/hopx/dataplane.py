"""The Hopx data plane, proxied to the agent inside each sandbox.

The hopx-ai SDK sends HTTP to ``public_host + path`` (``/sandboxes/{id}/execute``...) but opens
WebSockets at the root of the host (``/execute/stream``, ``/terminal``, ``/files/watch``), so
the root WebSocket routes find their sandbox from the bearer token.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
from typing import Any
from urllib.parse import quote

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from agentplex.api.common.gateway import credential_from
from agentplex.api.common.routing import Call, Endpoint
from agentplex.core.auth import Principal
from agentplex.core.sandboxes import SandboxService, SandboxUnavailable, translated
from agentplex.errors import BadRequest, Forbidden, NotFound

_FORWARD_REQUEST = ("content-type", "accept")
_FORWARD_RESPONSE = ("content-type", "content-disposition")
_WEBSOCKETS = ("/execute/stream", "/terminal", "/files/watch")


def _service(scope_app: Any) -> SandboxService:
    svc: SandboxService | None = scope_app.state.runtime.sandboxes
    if svc is None:
        raise SandboxUnavailable("Sandboxes are disabled on this server")
    return svc


async def _authorize(svc: SandboxService, principal: Principal, sandbox_id: str) -> None:
    """A sandbox token opens its own sandbox; a key opens the sandboxes of its environment."""
    if principal.sandbox_id is not None:
        if principal.sandbox_id != sandbox_id:
            raise Forbidden("This token belongs to another sandbox")
        return
    await svc.check_owner(principal.env_id, sandbox_id)  # NotFound outside its environment


def _upstream_path(request: Request) -> str:
    """The path after /sandboxes/{id}, still percent-encoded as the client sent it (decoded, a
    control character or a literal '?' would not survive the trip)."""
    raw: bytes | None = request.scope.get("raw_path")
    if not raw:
        return "/" + quote(request.path_params["path"])
    _, _, _, rest = raw.decode("latin-1").split("/", 3)  # "", "sandboxes", id, rest
    return "/" + rest


async def proxy_http(request: Request) -> Response:
    svc = _service(request.app)
    sandbox_id = request.path_params["sandbox_id"]
    await _authorize(svc, request.scope["state"]["principal"], sandbox_id)
    # agentd's host-only routes (/_configure, /_reset, ...); dot segments are resolved first,
    # as the client library on the way to agentd resolves them ("x/../_reset")
    if posixpath.normpath("/" + request.path_params["path"]).startswith("/_"):
        raise NotFound(f"No route {request.method} {request.url.path}")
    headers = {k: v for k in _FORWARD_REQUEST if (v := request.headers.get(k))}
    body = await request.body()
    with translated():
        handle = svc.handle(sandbox_id)
        try:
            status, upstream_headers, content = await handle.request(
                request.method,
                _upstream_path(request),
                params=request.query_params.multi_items(),
                content=body or None,
                headers=headers,
            )
        except httpx.InvalidURL as exc:
            raise BadRequest(f"Invalid path or query: {exc}") from None
    out = {k: v for k in _FORWARD_RESPONSE if (v := upstream_headers.get(k))}
    return Response(content, status_code=status, headers=out)


async def proxy_websocket(websocket: WebSocket) -> None:
    svc = _service(websocket.app)
    principal: Principal = websocket.scope["state"]["principal"]
    sandbox_id = websocket.path_params.get("sandbox_id") or principal.sandbox_id
    if sandbox_id is None:  # auth is off, or a key was used: the token names the sandbox
        record = await svc.by_token(credential_from(websocket.scope["headers"]))
        sandbox_id = record.id if record else None
    if sandbox_id is None:
        await websocket.close(code=1008, reason="send the sandbox's auth_token as a bearer token")
        return
    try:
        await _authorize(svc, principal, sandbox_id)
        handle = svc.handle(sandbox_id)
    except Exception as exc:
        await websocket.close(code=1008, reason=str(exc)[:120])
        return
    path = websocket.scope["path"]
    if path.startswith("/sandboxes/"):
        path = "/" + path.split("/", 3)[3]
    query = websocket.scope.get("query_string", b"").decode()
    await websocket.accept()
    try:
        async with handle.websocket(path + (f"?{query}" if query else "")) as upstream:
            await _relay(websocket, upstream)
    except Exception as exc:
        with contextlib.suppress(Exception):
            await websocket.send_json({"type": "error", "error": str(exc), "code": "PROXY_ERROR"})
            await websocket.close(code=1011)


async def _relay(client: WebSocket, upstream: Any) -> None:
    async def downstream() -> None:
        async for message in upstream:
            if isinstance(message, bytes):
                await client.send_bytes(message)
            else:
                await client.send_text(message)

    async def upstream_pump() -> None:
        while True:
            message = await client.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await upstream.send(message["text"])
            elif message.get("bytes") is not None:
                await upstream.send(message["bytes"])

    tasks = [asyncio.create_task(downstream()), asyncio.create_task(upstream_pump())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, Exception):
                await task
    with contextlib.suppress(Exception):
        await client.close()


async def _never(_call: Call) -> dict[str, Any]:  # documentation only; proxy_http serves
    raise NotImplementedError


DOCUMENTED = [
    Endpoint(
        method,
        "/sandboxes/{sandbox_id}/{path:path}",
        _never,
        summary=f"Sandbox data plane ({method}): /execute, /commands/run, /files/*, /env, ... "
        "proxied to the sandbox's agent; Bearer <auth_token> or an API key",
        tags=["hopx data plane"],
    )
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
]


def routes() -> list[BaseRoute]:
    """The data-plane routes (HTTP under /sandboxes/{id}, WebSockets at both places)."""
    out: list[BaseRoute] = []
    for path in _WEBSOCKETS:
        out.append(WebSocketRoute(path, proxy_websocket))
        out.append(WebSocketRoute("/sandboxes/{sandbox_id}" + path, proxy_websocket))
    out.append(
        Route(
            "/sandboxes/{sandbox_id}/{path:path}",
            proxy_http,
            methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        )
    )
    return out
