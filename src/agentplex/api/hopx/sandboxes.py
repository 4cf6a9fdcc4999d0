"""Hopx control plane: ``/v1/sandboxes`` lifecycle."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, StrictBool, StrictInt

from agentplex.api.common.routing import Call, RouteTable
from agentplex.api.hopx.views import sandbox_view, with_token

routes = RouteTable(tags=["hopx"])


class CreateSandbox(BaseModel):
    template_name: str | None = Field(None, description="Template by name (default python)")
    template_id: str | None = Field(None, description="Template by id")
    template: str | None = Field(None, description="Template by name or id (as typed with curl)")
    # strict: `true` is not 1 second and "yes" is not internet access
    timeout_seconds: StrictInt | None = Field(
        None, description="Stop the sandbox after this many seconds (0: never)"
    )
    internet_access: StrictBool = Field(
        False, description="Outbound network access (public addresses only)"
    )
    env_vars: dict[str, str] = Field(default_factory=dict, description="Environment variables")


class ListSandboxes(BaseModel):
    limit: int = Field(100, ge=1, le=1000, description="Page size")
    status: Literal["creating", "running", "paused", "stopped"] | None = Field(
        None, description="creating, running, paused or stopped"
    )
    cursor: str | None = Field(None, description="next_cursor of the previous page")


class SetTimeout(BaseModel):
    timeout_seconds: StrictInt = Field(..., description="New lifetime, counted from now (0: none)")


@routes.post("/v1/sandboxes", summary="Create a sandbox from a template", body=CreateSandbox)
async def create(call: Call) -> dict[str, Any]:
    body: CreateSandbox = call.body
    record, token = await call.services.sandboxes.create(
        call.principal.env_id,
        template=body.template_id or body.template_name or body.template,
        timeout_seconds=body.timeout_seconds,
        internet_access=body.internet_access,
        env_vars=body.env_vars,
    )
    return with_token(sandbox_view(record, call.request), token)


@routes.get("/v1/sandboxes", summary="List sandboxes (cursor pagination)", query=ListSandboxes)
async def list_sandboxes(call: Call) -> dict[str, Any]:
    q: ListSandboxes = call.query
    rows, next_cursor = await call.services.sandboxes.page(
        call.principal.env_id, status=q.status, limit=q.limit, cursor=q.cursor
    )
    return {
        "data": [sandbox_view(r, call.request) for r in rows],
        "has_more": next_cursor is not None,
        "next_cursor": next_cursor,
    }


@routes.get("/v1/sandboxes/{sandbox_id}", summary="Get a sandbox")
async def get(call: Call) -> dict[str, Any]:
    record = await call.services.sandboxes.get(
        call.principal.env_id, call.path_params["sandbox_id"]
    )
    return sandbox_view(record, call.request)


@routes.delete("/v1/sandboxes/{sandbox_id}", summary="Delete a sandbox and its files")
async def delete(call: Call) -> dict[str, Any]:
    sandbox_id = call.path_params["sandbox_id"]
    await call.services.sandboxes.delete(call.principal.env_id, sandbox_id)
    return {"id": sandbox_id, "status": "deleted", "message": "Sandbox deleted"}


def _action(name: str, summary: str) -> None:
    @routes.post(f"/v1/sandboxes/{{sandbox_id}}/{name}", summary=summary)
    async def act(call: Call) -> dict[str, Any]:
        svc = call.services.sandboxes
        env_id, sandbox_id = call.principal.env_id, call.path_params["sandbox_id"]
        if name == "stop":
            record = await svc.stop(env_id, sandbox_id)
        elif name == "start":
            record = await svc.start_sandbox(env_id, sandbox_id)
        elif name == "pause":
            record = await svc.pause(env_id, sandbox_id)
        else:
            record = await svc.resume(env_id, sandbox_id)
        return sandbox_view(record, call.request)


for _name, _summary in (
    ("start", "Start a stopped sandbox (its files are kept)"),
    ("stop", "Stop a sandbox's processes, keeping its files"),
    ("pause", "Freeze a sandbox's processes"),
    ("resume", "Thaw a paused sandbox"),
):
    _action(_name, _summary)


@routes.put("/v1/sandboxes/{sandbox_id}/timeout", summary="Set the timeout", body=SetTimeout)
async def set_timeout(call: Call) -> dict[str, Any]:
    record = await call.services.sandboxes.set_timeout(
        call.principal.env_id, call.path_params["sandbox_id"], call.body.timeout_seconds
    )
    return sandbox_view(record, call.request)


@routes.post("/v1/sandboxes/{sandbox_id}/token/refresh", summary="Issue a new auth_token")
async def refresh_token(call: Call) -> dict[str, Any]:
    record, token = await call.services.sandboxes.refresh_token(
        call.principal.env_id, call.path_params["sandbox_id"]
    )
    return with_token(sandbox_view(record, call.request), token)
