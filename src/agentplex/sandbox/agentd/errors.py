"""Hopx error envelope: `{error, code, message, details?}` plus an X-Request-ID header."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse


class AgentError(Exception):
    """A request failed; carries the Hopx error code and HTTP status."""

    def __init__(
        self, code: str, message: str, status: int = 400, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.details = details


def invalid(message: str, **details: Any) -> AgentError:
    return AgentError("INVALID_REQUEST", message, 400, details or None)


def not_found(path: str) -> AgentError:
    return AgentError("FILE_NOT_FOUND", f"no such file or directory: {path}", 404, {"path": path})


def bad_workdir(path: str, why: str) -> AgentError:
    return AgentError(
        "INVALID_WORKDIR",
        f"working directory {path!r} {why}; create it first or use another",
        400,
        {"workdir": path},
    )


def not_allowed(path: str) -> AgentError:
    return AgentError(
        "PATH_NOT_ALLOWED",
        f"path {path!r} is outside the sandbox; use paths under /workspace or /tmp",
        403,
        {"path": path},
    )


def permission_denied(path: str) -> AgentError:
    """The sandbox's user may not do this to a file inside the sandbox (a read-only file, a
    directory without write permission); PATH_NOT_ALLOWED is for paths outside it."""
    return AgentError(
        "PERMISSION_DENIED",
        f"permission denied: {path} (check the file's and its directory's permissions)",
        403,
        {"path": path},
    )


def request_id(request: Request) -> str:
    return request.headers.get("x-request-id") or uuid.uuid4().hex


def error_response(exc: AgentError, rid: str) -> JSONResponse:
    body: dict[str, Any] = {
        "error": exc.message,
        "code": exc.code,
        "message": exc.message,
        "request_id": rid,
    }
    if exc.details:
        body["details"] = exc.details
    return JSONResponse(body, status_code=exc.status, headers={"X-Request-ID": rid})
