"""How sandboxes and templates look on the wire (the fields the hopx-ai SDKs read)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from agentplex.core.clock import iso
from agentplex.core.ports import Resources, Template
from agentplex.core.sandbox_tokens import IssuedToken
from agentplex.core.sandboxes import SandboxRecord
from agentplex.core.templates import CustomTemplate
from agentplex.services import Services

# What a template's sandboxes may ask for, whatever the template's defaults: the bounds the
# SDKs show as min_resources / max_resources.
_MIN = Resources(vcpu=1, memory_mb=64, disk_mb=1024)
_MAX = Resources(vcpu=64, memory_mb=1024 * 1024, disk_mb=1024 * 1024)


def base_url(request: Request) -> str:
    """Where clients reach this server: the configured public URL, else what they called."""
    services: Services = request.app.state.services
    configured = services.settings.server.public_url
    if configured:
        return str(configured).rstrip("/")
    return f"{request.url.scheme}://{request.url.netloc}"


def _vcpu(value: float) -> int | float:
    """The SDKs type vcpu as an integer: whole numbers go out as one."""
    return int(value) if float(value).is_integer() else value


def sandbox_resources(res: Resources) -> dict[str, Any]:
    return {"vcpu": _vcpu(res.vcpu), "memory_mb": res.memory_mb, "disk_mb": res.disk_mb}


def sandbox_view(record: SandboxRecord, request: Request) -> dict[str, Any]:
    return {
        "id": record.id,
        "sandbox_id": record.id,
        "status": record.status,
        "status_reason": record.status_reason,
        "public_host": f"{base_url(request)}/sandboxes/{record.id}",
        "template_id": record.template_id,
        "template_name": record.template_name,
        "resources": sandbox_resources(record.resources),
        "internet_access": record.internet_access,
        "timeout_seconds": record.timeout_seconds,
        "expires_at": iso(record.expires_at),
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
        "isolation": record.isolation,
        "env_vars": sorted(record.env_vars),  # names only: values may be secrets
    }


def with_token(view: dict[str, Any], token: IssuedToken) -> dict[str, Any]:
    return {**view, "auth_token": token.token, "token_expires_at": iso(token.expires_at)}


def _template_resources(res: Resources) -> dict[str, Any]:
    return {"vcpu": _vcpu(res.vcpu), "memory_mb": res.memory_mb, "disk_gb": res.disk_mb // 1024}


def _resources_fields(res: Resources) -> dict[str, Any]:
    return {
        "resources": sandbox_resources(res),
        "default_resources": _template_resources(res),
        "min_resources": _template_resources(_MIN),
        "max_resources": _template_resources(_MAX),
    }


def builtin_view(template: Template) -> dict[str, Any]:
    return {
        "id": template.id,
        "name": template.name,
        "display_name": template.display_name,
        "language": template.language,
        "description": template.description,
        "builtin": True,
        "is_public": True,
        "status": "active",
        "is_active": True,
        "object": "template",
        **_resources_fields(template.resources),
    }


def custom_view(template: CustomTemplate) -> dict[str, Any]:
    return {
        "id": template.id,
        "name": template.name,
        "display_name": template.display_name,
        "language": template.language,
        "description": f"Built from {template.base_template}",
        "base_template": template.base_template,
        "builtin": False,
        "is_public": False,
        "status": template.status,
        "is_active": template.status == "active",
        "build_id": template.id,
        "error_message": template.error_message,
        "created_at": iso(template.created_at),
        "object": "template",
        **_resources_fields(template.resources),
    }


def template_view(template: Template | CustomTemplate) -> dict[str, Any]:
    if isinstance(template, CustomTemplate):
        return custom_view(template)
    return builtin_view(template)


def build_status_view(template: CustomTemplate) -> dict[str, Any]:
    steps = template.steps
    started = template.steps_started
    building = template.status == "building"
    return {
        "build_id": template.id,
        "template_id": template.id,
        "status": template.status,
        "progress": int(90 * started / max(1, len(steps))) if building else 100,
        "current_step": steps[started - 1].command if building and started else None,
        "started_at": iso(template.started_at),
        "completed_at": iso(template.completed_at),
        "error_message": template.error_message,
        "build_duration_ms": template.build_duration_ms,
    }


def build_logs_view(template: CustomTemplate, offset: int) -> dict[str, Any]:
    text = template.logs
    offset = max(0, min(offset, len(text)))
    return {
        "logs": text[offset:],
        "offset": len(text),
        "status": template.status,
        "complete": template.status != "building",
    }
