"""Hopx ``/v1/templates``: the built-ins and custom templates built from setup commands."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agentplex.api.common.routing import Call, RouteTable
from agentplex.core.sandboxes import SandboxUnavailable
from agentplex.core.templates import TemplateService

routes = RouteTable(tags=["hopx"])


class BuildStep(BaseModel):
    """One step as the hopx-ai template builder sends it (its other keys are ignored)."""

    model_config = ConfigDict(extra="ignore")
    type: str = Field(..., description="RUN, ENV or WORKDIR")
    args: list[str] = Field(default_factory=list, description="The step's arguments")


class BuildTemplate(BaseModel):
    """A template build: the hopx-ai SDK's body, plus `from_template` and `setup_commands`."""

    model_config = ConfigDict(extra="ignore")  # startCmd, readyCmd, skipCache, ...: unused
    name: str | None = Field(None, description="The template's name (required, or `alias`)")
    alias: str | None = Field(None, description="Older name of `name`")
    display_name: str | None = Field(None, description="Shown in listings")
    from_template: str | None = Field(None, description="Built-in base template (python, ...)")
    base_template: str | None = Field(None, description="Same as from_template")
    template: str | None = Field(None, description="Same as from_template")
    from_image: str | None = Field(None, description="An image name picking the base by language")
    steps: list[BuildStep] = Field(default_factory=list, description="RUN/ENV/WORKDIR steps")
    setup_commands: list[str] = Field(default_factory=list, description="Shell commands to run")
    env: dict[str, str] = Field(default_factory=dict, description="Environment of the template")
    env_vars: dict[str, str] = Field(default_factory=dict, description="Same as env")
    cpu: float | None = Field(None, gt=0, le=64, description="vCPUs of its sandboxes")
    memory: int | None = Field(None, ge=64, le=1_048_576, description="Memory (MiB)")
    diskGB: int | None = Field(None, ge=1, le=1024, description="Workspace quota (GiB)")
    update: bool = Field(False, description="Replace a template of the same name")


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
    body=BuildTemplate,
)
async def build(call: Call) -> dict[str, Any]:
    body = call.body.model_dump(exclude_none=True)
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
