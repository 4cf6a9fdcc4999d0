"""The Hopx data plane, relayed to the agent inside each sandbox.

The hopx-ai SDKs send HTTP to ``public_host + path`` (``/sandboxes/{id}/execute``...) but open
WebSockets at the root of the host (``/execute/stream``, ``/terminal``, ``/files/watch``), so
the root WebSocket routes find their sandbox from the bearer token.

A client that goes away takes its request with it: the relay to the sandbox is cancelled,
the sandbox's agent sees its connection close and interrupts the execution, and the next one
starts at once. ``POST /execute/async`` is answered here: the execution runs in the
background and its result is POSTed to the caller's ``callback_url``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import posixpath
import time
import uuid
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from agentplex.api.common.gateway import credential_from
from agentplex.api.common.routing import RouteTable, read_json
from agentplex.core.auth import Principal
from agentplex.core.sandboxes import SandboxService
from agentplex.errors import BadRequest, Forbidden, NotFound
from agentplex.services import Services

routes = RouteTable(tags=["hopx data plane"])

_FORWARD_REQUEST = ("content-type", "accept")
_FORWARD_RESPONSE = ("content-type", "content-disposition")
_WEBSOCKETS = ("/execute/stream", "/terminal", "/files/watch")
_CLIENT_GONE = 499  # nginx's "client closed request": for metrics, nobody reads it
_ASYNC_TIMEOUT_SECONDS = 1800.0  # the SDKs' default for /execute/async


def _services(scope_app: Any) -> Services:
    services: Services = scope_app.state.services
    return services


async def _authorize(svc: SandboxService, principal: Principal, sandbox_id: str) -> None:
    """A sandbox token opens its own sandbox; a key opens the sandboxes of its environment.
    Either way the sandbox must still exist (a verified token may be trusted from a cache)."""
    if principal.sandbox_id is not None and principal.sandbox_id != sandbox_id:
        raise Forbidden("This token belongs to another sandbox")
    await svc.check_owner(principal.env_id, sandbox_id)  # NotFound outside its environment


def _upstream_path(request: Request) -> str:
    """The path after /sandboxes/{id}, still percent-encoded as the client sent it (decoded, a
    control character or a literal '?' would not survive the trip)."""
    raw: bytes | None = request.scope.get("raw_path")
    if not raw:
        return "/" + quote(request.path_params["path"])
    _, _, _, rest = raw.decode("latin-1").split("/", 3)  # "", "sandboxes", id, rest
    # one leading slash only: "//x/_reset" would make the HTTP client read "x" as a host
    return "/" + rest.lstrip("/")


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (its body was read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def proxy_http(request: Request) -> Response:
    services = _services(request.app)
    svc = services.sandboxes
    sandbox_id = request.path_params["sandbox_id"]
    await _authorize(svc, request.scope["state"]["principal"], sandbox_id)
    path = posixpath.normpath("/" + request.path_params["path"].lstrip("/"))
    # agentd's host-only routes (/_configure, /_reset, ...); dot segments are resolved first,
    # as the client library on the way to agentd resolves them ("x/../_reset"), and leading
    # slashes collapsed, as the path is sent ("//x/_reset" would otherwise be host x, /_reset)
    if path.startswith("/_"):
        raise NotFound(f"No route {request.method} {request.url.path}")
    if request.method == "POST" and path == "/execute/async":
        return await _execute_async(services, sandbox_id, request)
    headers = {k: v for k in _FORWARD_REQUEST if (v := request.headers.get(k))}
    # agentd's error bodies carry a request_id: the one this answer's X-Request-ID header has
    # (the client's own, or the gateway's), not one agentd makes up
    rid = request.scope.get("state", {}).get("request_id")
    if rid:
        headers["x-request-id"] = rid
    body = await request.body()
    relay = asyncio.ensure_future(
        svc.request(
            sandbox_id,
            request.method,
            _upstream_path(request),
            params=request.query_params.multi_items(),
            content=body or None,
            headers=headers,
        )
    )
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait((relay, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not relay.done():  # closing the relay's connection tells agentd to stop the work
        relay.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await relay
        return Response(status_code=_CLIENT_GONE)
    answer = relay.result()
    out = {k: v for k in _FORWARD_RESPONSE if (v := answer.headers.get(k))}
    return Response(answer.body, status_code=answer.status, headers=out)


async def _execute_async(services: Services, sandbox_id: str, request: Request) -> Response:
    """Start an execution whose result is POSTed to ``callback_url`` when it ends."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object")
    url = await services.callbacks.check(str(body.get("callback_url") or ""))
    if not isinstance(body.get("code"), str):
        raise BadRequest("'code' (a string) is required")
    headers = body.get("callback_headers") or {}
    secret = body.get("callback_signature_secret")
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise BadRequest("'callback_headers' must be an object of strings")
    if secret is not None and not isinstance(secret, str):
        raise BadRequest("'callback_signature_secret' must be a string")
    try:
        timeout = float(body.get("timeout") or _ASYNC_TIMEOUT_SECONDS)
    except (TypeError, ValueError):
        raise BadRequest("'timeout' must be a number of seconds") from None
    execution_id = "exec_" + uuid.uuid4().hex[:16]
    execute = {k: body[k] for k in ("code", "language", "workdir", "env") if k in body}
    execute["timeout"] = timeout

    async def job() -> dict[str, Any]:
        started = time.time()
        try:
            answer = await services.sandboxes.request(
                sandbox_id, "POST", "/execute", json=execute, timeout=timeout + 30
            )
            result = json.loads(answer.body or b"{}")
        except Exception as exc:  # the sandbox went away: say so to the callback
            result = {"error": str(exc), "exit_code": None}
        status = "completed" if result.get("exit_code") == 0 else "failed"
        if result.get("code") == "EXECUTION_TIMEOUT":
            status = "timeout"
        details = result.get("details") if isinstance(result.get("details"), dict) else {}
        return {
            "execution_id": execution_id,
            "sandbox_id": sandbox_id,
            "status": status,
            "stdout": result.get("stdout", details.get("stdout", "")),
            "stderr": result.get("stderr", details.get("stderr", "")),
            "exit_code": result.get("exit_code", details.get("exit_code")),
            "execution_time": result.get("execution_time", round(time.time() - started, 3)),
            "error": result.get("error") if status != "completed" else None,
            **{k: v for k, v in result.items() if k in ("png", "html", "json", "rich_outputs")},
        }

    services.callbacks.spawn(job(), url, headers=headers, secret=secret)
    return JSONResponse(
        {"execution_id": execution_id, "status": "queued", "callback_url": url}, status_code=202
    )


async def proxy_websocket(websocket: WebSocket) -> None:
    svc = _services(websocket.app).sandboxes
    principal: Principal = websocket.scope["state"]["principal"]
    sandbox_id = websocket.path_params.get("sandbox_id") or principal.sandbox_id
    if sandbox_id is None:  # auth is off, or a key was used: the token names the sandbox
        token = await svc.tokens.verify(credential_from(websocket.scope["headers"]))
        sandbox_id = token.sandbox_id if token else None
    if sandbox_id is None:
        await websocket.close(code=1008, reason="send the sandbox's auth_token as a bearer token")
        return
    try:
        await _authorize(svc, principal, sandbox_id)
    except Exception as exc:
        await websocket.close(code=1008, reason=str(exc)[:120])
        return
    path = websocket.scope["path"]
    if path.startswith("/sandboxes/"):
        path = "/" + path.split("/", 3)[3]
    query = websocket.scope.get("query_string", b"").decode()
    await websocket.accept()
    try:
        async with svc.websocket(sandbox_id, path + (f"?{query}" if query else "")) as upstream:
            await _relay(websocket, upstream)
    except Exception as exc:
        with contextlib.suppress(Exception):
            await websocket.send_json({"type": "error", "error": str(exc), "code": "PROXY_ERROR"})
            await websocket.close(code=1011)


async def _relay(client: WebSocket, upstream: Any) -> None:
    """Frames both ways until either side closes; leaving closes the sandbox's side, which
    stops what the client had running."""

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


for _method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
    routes.raw(
        _method,
        "/sandboxes/{sandbox_id}/{path:path}",
        proxy_http,
        summary=f"Sandbox data plane ({_method}): /execute, /execute/async, /commands/run, "
        "/files/*, /env, ... relayed to the sandbox's agent; Bearer <auth_token> or an API key",
    )
for _path in _WEBSOCKETS:
    routes.websocket(_path, summary=f"{_path} of the sandbox the bearer token opens")(
        proxy_websocket
    )
    routes.websocket("/sandboxes/{sandbox_id}" + _path, summary=f"{_path} of a sandbox")(
        proxy_websocket
    )
