"""Hopx ``/v1/templates``: the built-ins and custom templates built from setup commands."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from agentplex.api.common.routing import Call, RouteTable, read_json
from agentplex.core.sandboxes import SandboxUnavailable
from agentplex.core.templates import TemplateService
from agentplex.errors import BadRequest

routes = RouteTable(tags=["hopx"])


class LogsQuery(BaseModel):
    offset: int = Field(0, ge=0, description="Characters of the log already read")


def service(call: Call) -> TemplateService:
    svc: TemplateService | None = call.request.app.state.runtime.templates
    if svc is None:
        raise SandboxUnavailable("Sandboxes are disabled on this server (sandbox.enabled=false)")
    return svc


@routes.get("/v1/templates", summary="List templates (built-in and this environment's)")
async def list_templates(call: Call) -> dict[str, Any]:
    return {"data": await service(call).list_views(call.principal.env_id)}


@routes.post(
    "/v1/templates/build",
    summary="Build a custom template: a base template plus setup commands (RUN/ENV/WORKDIR "
    "steps or setup_commands), installed into the template's own layer",
)
async def build(call: Call) -> dict[str, Any]:
    body = await read_json(call.request)
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object")
    return await service(call).build(call.principal.env_id, body)


@routes.get("/v1/templates/build/{build_id}/status", summary="Build status")
async def build_status(call: Call) -> dict[str, Any]:
    return await service(call).build_status(call.principal.env_id, call.path_params["build_id"])


@routes.get(
    "/v1/templates/build/{build_id}/logs", summary="Build logs from an offset", query=LogsQuery
)
async def build_logs(call: Call) -> dict[str, Any]:
    return await service(call).build_logs(
        call.principal.env_id, call.path_params["build_id"], call.query.offset
    )


@routes.get("/v1/templates/{template}", summary="Get a template by id or name")
async def get_template(call: Call) -> dict[str, Any]:
    return await service(call).view(call.principal.env_id, call.path_params["template"])


@routes.delete("/v1/templates/{template}", summary="Delete a custom template and its layer")
async def delete_template(call: Call) -> dict[str, Any]:
    ref = call.path_params["template"]
    await service(call).delete(call.principal.env_id, ref)
    return {"id": ref, "status": "deleted", "message": "Template deleted"}
