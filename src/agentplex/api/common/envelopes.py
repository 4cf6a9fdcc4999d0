"""Response envelopes of the five surfaces, success and error, in one place."""

from __future__ import annotations

from typing import Any

from agentplex.api.common.surface import Surface
from agentplex.core.clock import iso, utcnow

# Domain error codes (lower-case, PRX style) as each surface spells them.
_HOT_CODES = {"rate_limited": "rate_limit_exceeded", "internal_error": "internal_server_error"}
_UPPER_CODES = {"bad_request": "INVALID_REQUEST"}
_OPENCODE_NAMES = {
    "bad_request": "BadRequest",
    "unauthorized": "UnauthorizedError",
    "not_found": "NotFoundError",
    "session_not_found": "NotFoundError",
    "message_not_found": "NotFoundError",
    "permission_not_found": "NotFoundError",
    "internal_error": "UnknownError",
}


def hot_data(data: Any, request_id: str) -> dict[str, Any]:
    """Hot's ``{data, meta}``."""
    return {"data": data, "meta": _meta(request_id)}


def hot_list(
    items: list[Any], *, total: int, limit: int, offset: int, request_id: str
) -> dict[str, Any]:
    """Hot's list envelope with ``pagination``."""
    return {
        "data": items,
        "pagination": {
            "total": total,
            "limit": limit,
            "offset": offset,
            "has_more": offset + len(items) < total,
        },
        "meta": _meta(request_id),
    }


def par_ok(data: Any, request_id: str) -> dict[str, Any]:
    """PAR's ``{success, data, timestamp, request_id}``."""
    return {"success": True, "data": data, "timestamp": iso(utcnow()), "request_id": request_id}


def _meta(request_id: str) -> dict[str, Any]:
    return {"request_id": request_id, "timestamp": iso(utcnow())}


# PRX's page has one code per status (not_found, conflict, ...): its clients switch on those
_PRX_CODES = {
    "session_not_found": "not_found",
    "message_not_found": "not_found",
    "permission_not_found": "not_found",
    "session_terminated": "conflict",
    "model_not_configured": "bad_request",
}


def surface_code(surface: Surface, code: str) -> str:
    """A domain error code as ``surface`` spells it."""
    if surface is Surface.HOT:
        return _HOT_CODES.get(code, code)
    if surface is Surface.PRX:
        return _PRX_CODES.get(code, code)
    if surface in (Surface.PAR, Surface.HOPX, Surface.HOPX_DATA):
        return _UPPER_CODES.get(code, code.upper())
    return code


def error_body(
    surface: Surface,
    *,
    code: str,
    message: str,
    request_id: str,
    details: Any = None,
    retry_after: int | None = None,
) -> dict[str, Any]:
    """The error envelope of ``surface``."""
    spelled = surface_code(surface, code)
    if surface is Surface.HOT:
        error: dict[str, Any] = {"code": spelled, "message": message, "request_id": request_id}
        if details is not None:
            error["details"] = details
        if retry_after is not None:
            error["retry_after"] = retry_after
        return {"error": error}
    if surface is Surface.PRX:
        error = {"code": spelled, "message": message, "details": details}
        if retry_after is not None:
            error["retry_after"] = retry_after
        return {"error": error}
    if surface is Surface.HOPX:
        # hopx-ai (Python) reads error.{code,message,request_id,details}; @hopx-ai/sdk reads
        # code and message at the top level: both are there
        error = {"code": spelled, "message": message, "request_id": request_id}
        error["details"] = details if details is not None else {}
        return {"error": error, "code": spelled, "message": message, "request_id": request_id}
    if surface is Surface.HOPX_DATA:  # agentd's own shape, which both SDKs' agent clients read
        body: dict[str, Any] = {
            "error": message,
            "code": spelled,
            "message": message,
            "request_id": request_id,
        }
        if details is not None:
            body["details"] = details
        return body
    if surface is Surface.OPENCODE:
        name = _OPENCODE_NAMES.get(code, "".join(p.title() for p in code.split("_")) + "Error")
        # OpenCode's errors carry only a message (and `kind` for payload errors)
        data: dict[str, Any] = {"message": message}
        if code == "bad_request":
            data["kind"] = "Payload"  # OpenCode's schema failures: the JS SDK reads data.message
        if details is not None:
            data["details"] = details
        return {"name": name, "data": data}
    # PAR, and the shared routes: a body that satisfies PAR, Hot and PRX readers at once.
    error = {"code": spelled, "message": message, "details": details}
    if surface is Surface.SHARED:
        error["request_id"] = request_id
    if retry_after is not None:
        error["retry_after"] = retry_after
    return {
        "success": False,
        "error": error,
        "timestamp": iso(utcnow()),
        "request_id": request_id,
    }
