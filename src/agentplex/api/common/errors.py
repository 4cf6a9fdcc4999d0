"""Every error leaves through here: domain exceptions, validation and routing errors are
turned into the envelope of the surface the request came through, with the right status."""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ExceptionHandler

from agentplex.api.common.envelopes import error_body
from agentplex.api.common.surface import surface_for
from agentplex.errors import AgentplexError, RateLimited

log = logging.getLogger("agentplex.api")

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "bad_request",
    429: "rate_limited",
    503: "service_unavailable",
}


def error_response(
    path: str,
    status: int,
    code: str,
    message: str,
    request_id: str,
    *,
    details: Any = None,
    headers: dict[str, str] | None = None,
    retry_after: int | None = None,
) -> Response:
    """A JSON error response in the envelope of the surface ``path`` belongs to."""
    body = error_body(
        surface_for(path),
        code=code,
        message=message,
        request_id=request_id,
        details=details,
        retry_after=retry_after,
    )
    return Response(
        json.dumps(body, default=str),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def request_id_of(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


def domain_error_response(path: str, exc: AgentplexError, request_id: str) -> Response:
    """The response for a domain exception."""
    headers: dict[str, str] = {}
    retry_after = None
    if isinstance(exc, RateLimited):
        retry_after = exc.retry_after
        headers["Retry-After"] = str(exc.retry_after)
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return error_response(
        path,
        exc.status,
        exc.code,
        exc.message,
        request_id,
        details=exc.details,
        headers=headers,
        retry_after=retry_after,
    )


async def _on_domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AgentplexError)
    if exc.status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
    return domain_error_response(request.url.path, exc, request_id_of(request))


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "bad_request" if exc.status_code < 500 else "")
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"No route {request.method} {request.url.path}; see /docs for the API."
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {request.url.path}" + (
            f"; allowed: {allowed}" if allowed else ""
        )
    return error_response(
        request.url.path,
        exc.status_code,
        code or "internal_error",
        message,
        request_id_of(request),
        headers=dict(exc.headers or {}),
    )


async def _on_client_gone(request: Request, exc: Exception) -> Response:
    """The client left before sending its whole body: nobody will read an answer, and it is
    not a server fault worth a traceback."""
    return Response(status_code=400)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error in %s %s", request.method, request.url.path)
    return error_response(
        request.url.path,
        500,
        "internal_error",
        "Unexpected server error; it has been logged with this request id.",
        request_id_of(request),
    )


HANDLERS: dict[Any, ExceptionHandler] = {
    ClientDisconnect: _on_client_gone,
    AgentplexError: _on_domain_error,
    StarletteHTTPException: _on_http_error,
    Exception: _on_unexpected,
}
