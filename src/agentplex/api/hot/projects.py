"""Hot's projects and their context variables (secrets): ``/v1/projects`` CRUD by UUID or name,
activate/deactivate, and ``/v1/projects/{project}/context``. A context variable's value goes in
and never comes out: answers carry its key, description and times only."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, StrictBool, StrictStr
from starlette.responses import Response

from agentplex.api.common.envelopes import hot_data, hot_list
from agentplex.api.common.routing import Call, RouteTable, dumps
from agentplex.core.clock import iso
from agentplex.core.projects import Project, ProjectService
from agentplex.core.secrets import UNSET, ContextVariable, SecretService

routes = RouteTable(tags=["hot"])

_PROJECT = "/v1/projects/{project_id_or_slug}"
_MAX_LIMIT = 1000
_MAX_OFFSET = 1_000_000_000


class Page(BaseModel):
    limit: int = Field(20, ge=1, le=_MAX_LIMIT, description="Max results (default 20)")
    offset: int = Field(0, ge=0, le=_MAX_OFFSET, description="Pagination offset")


class CreateProject(BaseModel):
    name: StrictStr = Field(
        description="1-100 letters, digits, '-', '_' or '.'; unique in the environment"
    )


class UpdateProject(BaseModel):
    name: StrictStr | None = Field(None, description="The new name")
    active: StrictBool | None = Field(None, description="Activate (true) or deactivate (false)")


class CreateContextVariable(BaseModel):
    key: StrictStr = Field(
        description="An environment variable name ([A-Za-z_][A-Za-z0-9_]*, at most 128)"
    )
    value: StrictStr = Field(description="The secret value (at most 64 KiB); never returned")
    description: StrictStr | None = Field(None, description="What the variable is for")


class PutContextVariable(BaseModel):
    value: StrictStr | None = Field(
        None, description="The new value (required when the key does not exist yet)"
    )
    description: StrictStr | None = Field(
        None, description="The new description (omitted: kept; null: cleared)"
    )


def _projects(call: Call) -> ProjectService:
    services: Any = call.services
    service: ProjectService = services.projects
    return service


def _secrets(call: Call) -> SecretService:
    services: Any = call.services
    service: SecretService = services.secrets
    return service


def project_view(project: Project) -> dict[str, Any]:
    return {
        "project_id": project.project_id,
        "env_id": project.env_id,
        "name": project.name,
        "active": project.active,
        "created_at": iso(project.created_at),
        "updated_at": iso(project.updated_at),
    }


def context_view(variable: ContextVariable) -> dict[str, Any]:
    """Metadata only: a value never leaves the server."""
    return {
        "key": variable.key,
        "description": variable.description,
        "created_at": iso(variable.created_at),
        "updated_at": iso(variable.updated_at),
    }


def _ref(call: Call) -> str:
    return str(call.path_params["project_id_or_slug"])


# -- projects ----------------------------------------------------------------------------------


@routes.get("/v1/projects", summary="List projects (Hot)", query=Page)
async def list_projects(call: Call) -> dict[str, Any]:
    page: Page = call.query
    items, total = await _projects(call).list(
        call.principal.env_id, limit=page.limit, offset=page.offset
    )
    return hot_list(
        [project_view(p) for p in items],
        total=total,
        limit=page.limit,
        offset=page.offset,
        request_id=call.request_id,
    )


@routes.post("/v1/projects", summary="Create a project (Hot)", body=CreateProject, status=201)
async def create_project(call: Call) -> dict[str, Any]:
    body: CreateProject = call.body
    project = await _projects(call).create(call.principal.env_id, body.name)
    return hot_data(project_view(project), call.request_id)


@routes.get(_PROJECT, summary="Get a project by UUID or name (Hot)")
async def get_project(call: Call) -> dict[str, Any]:
    project = await _projects(call).get(call.principal.env_id, _ref(call))
    return hot_data(project_view(project), call.request_id)


@routes.patch(_PROJECT, summary="Rename a project (Hot)", body=UpdateProject)
async def update_project(call: Call) -> dict[str, Any]:
    body: UpdateProject = call.body
    project = await _projects(call).update(
        call.principal.env_id, _ref(call), name=body.name, active=body.active
    )
    return hot_data(project_view(project), call.request_id)


@routes.delete(_PROJECT, summary="Delete a project and what it holds (Hot)", status=204)
async def delete_project(call: Call) -> Response:
    env_id = call.principal.env_id
    project = await _projects(call).get(env_id, _ref(call))
    await call.services.runs.end_project(env_id, project.project_id)
    await _projects(call).delete(env_id, project.project_id)
    return Response(status_code=204)


@routes.post(_PROJECT + "/activate", summary="Activate a project (Hot)")
async def activate_project(call: Call) -> dict[str, Any]:
    project = await _projects(call).activate(call.principal.env_id, _ref(call))
    return hot_data(project_view(project), call.request_id)


@routes.post(_PROJECT + "/deactivate", summary="Deactivate a project (Hot)")
async def deactivate_project(call: Call) -> dict[str, Any]:
    project = await _projects(call).deactivate(call.principal.env_id, _ref(call))
    return hot_data(project_view(project), call.request_id)


# -- context variables (secrets) ---------------------------------------------------------------


@routes.get(_PROJECT + "/context", summary="List a project's context variables (Hot)", query=Page)
async def list_context(call: Call) -> dict[str, Any]:
    page: Page = call.query
    items, total = await _secrets(call).list(
        call.principal.env_id, _ref(call), limit=page.limit, offset=page.offset
    )
    return hot_list(
        [context_view(v) for v in items],
        total=total,
        limit=page.limit,
        offset=page.offset,
        request_id=call.request_id,
    )


@routes.post(
    _PROJECT + "/context",
    summary="Create a context variable (Hot); its value is never returned",
    body=CreateContextVariable,
    status=201,
)
async def create_context(call: Call) -> dict[str, Any]:
    body: CreateContextVariable = call.body
    variable = await _secrets(call).create(
        call.principal.env_id, _ref(call), body.key, body.value, body.description
    )
    return hot_data(context_view(variable), call.request_id)


@routes.put(
    _PROJECT + "/context/{key}",
    summary="Replace a context variable's value and/or description (Hot)",
    body=PutContextVariable,
)
async def put_context(call: Call) -> Response:
    body: PutContextVariable = call.body
    variable, created = await _secrets(call).put(
        call.principal.env_id,
        _ref(call),
        str(call.path_params["key"]),
        value=body.value,
        description=body.description if "description" in body.model_fields_set else UNSET,
    )
    return Response(
        dumps(hot_data(context_view(variable), call.request_id)),
        status_code=201 if created else 200,
        media_type="application/json",
    )


@routes.delete(_PROJECT + "/context/{key}", summary="Delete a context variable (Hot)", status=204)
async def delete_context(call: Call) -> Response:
    await _secrets(call).delete(call.principal.env_id, _ref(call), str(call.path_params["key"]))
    return Response(status_code=204)
