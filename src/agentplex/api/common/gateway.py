"""The one pure-ASGI middleware every request passes: request id, body limit, auth, rate
limit and metrics, done in a single pass so the hot path stays short."""

from __future__ import annotations

import itertools
import os
import re
import time
from typing import Any
from urllib.parse import parse_qs

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentplex.api.common.errors import domain_error_response, error_response
from agentplex.api.common.metrics import Metrics
from agentplex.api.common.ratelimit import RateLimiter, bucket_for
from agentplex.api.common.surface import is_data_plane
from agentplex.core.auth import Authenticator, Principal
from agentplex.core.logs import log_env
from agentplex.errors import RateLimited, Unauthorized

PROBE_PATHS = frozenset({"/health", "/health/live", "/health/ready", "/status"})
DOC_PATHS = frozenset({"/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def credential_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The key in ``Authorization: Bearer`` or ``X-API-Key``, or an empty string."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
    return ""


class Gateway:
    """Wraps the application."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticator: Authenticator,
        limiter: RateLimiter,
        metrics: Metrics,
        max_body_bytes: int,
        public_docs: bool,
    ) -> None:
        self.app = app
        self.auth = authenticator
        self.limiter = limiter
        self.metrics = metrics
        self.max_body = max_body_bytes
        self.public = PROBE_PATHS | (DOC_PATHS if public_docs else frozenset())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        request_id = _request_id(headers)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        extra: list[tuple[bytes, bytes]] = [(b"x-request-id", request_id.encode())]
        status_holder = [500]
        self.metrics.in_flight.inc()
        try:
            response = await self._admit(scope, path, method, headers, request_id, extra)
            if response is not None:
                status_holder[0] = response.status_code
                response.raw_headers.extend(extra)
                await response(scope, receive, send)
                return

            async def send_wrapper(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status_holder[0] = message["status"]
                    message["headers"] = list(message.get("headers", ())) + extra
                await send(message)

            wrapped_receive = self._limit_body(receive) if method in _BODY_METHODS else receive
            await self.app(scope, wrapped_receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.observe(
                method, route_template(scope), status_holder[0], time.perf_counter() - started
            )

    async def _admit(
        self,
        scope: Scope,
        path: str,
        method: str,
        headers: list[tuple[bytes, bytes]],
        request_id: str,
        extra: list[tuple[bytes, bytes]],
    ) -> Any:
        """None when the request may go on, else the response that refuses it."""
        if (
            "\x00" in path
            or b"%00" in scope.get("query_string", b"")
            or b"\x00" in scope.get("query_string", b"")
        ):
            # no route takes a NUL, and PostgreSQL refuses one in any text it is sent
            return error_response(
                path, 400, "bad_request", "The URL contains a NUL character (%00)", request_id
            )
        for name, value in headers:
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_body
                except ValueError:
                    return error_response(
                        path, 400, "bad_request", "Invalid Content-Length header", request_id
                    )
                if too_big:
                    return self._too_large(path, request_id)
                break
        if path in self.public:
            scope["state"]["principal"] = self.auth.anonymous
            return None
        principal = await self._principal(scope, headers)
        if principal is None or (principal.sandbox_id is not None and not is_data_plane(path)):
            return domain_error_response(path, _refusal(path, principal), request_id)
        scope["state"]["principal"] = principal
        log_env.set(principal.env_id)  # what this request logs is its environment's
        if self.limiter.enabled:
            decision = await self.limiter.hit(*bucket_for(principal.subject, method, path))
            extra.extend(decision.headers())
            if not decision.allowed:
                return domain_error_response(path, RateLimited(decision.retry_after), request_id)
        return None

    async def _principal(
        self, scope: Scope, headers: list[tuple[bytes, bytes]], fallback: str = ""
    ) -> Principal | None:
        if not await self.auth.required():
            client = scope.get("client")
            host = client[0] if client else "local"
            return Principal(self.auth.anonymous.env_id, "anonymous", None, "ip:" + host)
        return await self.auth.authenticate(credential_from(headers) or fallback)

    def _too_large(self, path: str, request_id: str) -> Any:
        return error_response(
            path,
            413,
            "payload_too_large",
            f"Request body is larger than the {self.max_body} bytes this server accepts",
            request_id,
        )

    def _limit_body(self, receive: Receive) -> Receive:
        """Count a body sent without Content-Length (chunked) against the limit."""
        remaining = [self.max_body]
        message_413 = f"Request body is larger than the {self.max_body} bytes this server accepts"

        async def limited() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                remaining[0] -= len(message.get("body", b""))
                if remaining[0] < 0:
                    # The routing layer turns this into a 413 in the surface's envelope.
                    raise HTTPException(413, message_413)
            return message

        return limited

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("state", {})["request_id"] = _request_id(scope["headers"])
        # browsers cannot set headers on a WebSocket: a `token` query parameter stands in
        principal = await self._principal(scope, scope["headers"], _query_token(scope))
        if principal is None or (
            principal.sandbox_id is not None and not is_data_plane(scope["path"])
        ):
            # Refusing the handshake: the client sees HTTP 403.
            await send({"type": "websocket.close", "code": 1008, "reason": "unauthorized"})
            return
        scope["state"]["principal"] = principal
        log_env.set(principal.env_id)
        await self.app(scope, receive, send)


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _query_token(scope: Scope) -> str:
    """The ``token`` query parameter of a WebSocket handshake, or an empty string."""
    query: bytes = scope.get("query_string", b"")
    if b"token=" not in query:
        return ""
    return parse_qs(query.decode("latin-1")).get("token", [""])[0].strip()


def _refusal(path: str, principal: Principal | None) -> Unauthorized:
    """The 401 for a request without a usable credential, saying which credential fits."""
    if principal is not None:  # a sandbox token outside its sandbox's data plane
        return Unauthorized(
            "A sandbox's auth_token opens only its own data plane (/sandboxes/{id}/...); "
            "use an API key here."
        )
    if is_data_plane(path):
        return Unauthorized(
            "Missing, invalid or expired credential: send the sandbox's auth_token (see "
            "POST /v1/sandboxes/{id}/token/refresh) or an API key as `Authorization: Bearer`."
        )
    return Unauthorized()


def route_template(scope: Scope) -> str:
    """The matched route's path with parameters as ``{name}`` (bounded metric labels)."""
    if "route" not in scope and "endpoint" not in scope:
        return "unmatched"
    path: str = scope["path"]
    params: dict[str, Any] = scope.get("path_params") or {}
    if not params:
        return path
    segments = path.split("/")
    for name, value in params.items():
        text = str(value)
        for index in range(len(segments) - 1, 0, -1):
            if segments[index] == text:
                segments[index] = "{" + name + "}"
                break
        else:  # a value spanning several segments ({name:path})
            joined = "/".join(segments)
            if text and joined.endswith(text):
                segments = (joined[: -len(text)] + "{" + name + "}").split("/")
    return "/".join(segments)


# A random per-process prefix and a counter: unique without a syscall per request.
_REQUEST_ID_PREFIX = os.urandom(8).hex() + "-"
_request_counter = itertools.count(1)


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _REQUEST_ID.match(candidate):
                return candidate
            break
    return _REQUEST_ID_PREFIX + format(next(_request_counter), "x")
