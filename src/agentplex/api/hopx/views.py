"""How sandbox records look on the wire (the fields the hopx-ai SDK reads)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from agentplex.core.clock import iso
from agentplex.core.sandbox_records import SandboxRecord


def base_url(request: Request) -> str:
    """Where clients reach this server: the configured public URL, else what they called."""
    configured = request.app.state.runtime.settings.server.public_url
    if configured:
        return str(configured).rstrip("/")
    return f"{request.url.scheme}://{request.url.netloc}"


def sandbox_view(record: SandboxRecord, request: Request) -> dict[str, Any]:
    return {
        "id": record.id,
        "sandbox_id": record.id,
        "status": record.status,
        "status_reason": record.status_reason,
        "public_host": f"{base_url(request)}/sandboxes/{record.id}",
        "template_id": record.template_id,
        "template_name": record.template_name,
        "resources": record.resources,
        "internet_access": record.internet_access,
        "timeout_seconds": record.timeout_seconds,
        "expires_at": iso(record.expires_at),
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
        "isolation": record.isolation,
        "env_vars": sorted(record.env_vars),  # names only: values may be secrets
    }


def with_token(view: dict[str, Any], token: str, record: SandboxRecord) -> dict[str, Any]:
    return {**view, "auth_token": token, "token_expires_at": iso(record.token_expires_at)}
