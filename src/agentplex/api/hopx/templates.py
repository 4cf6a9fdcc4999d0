"""Hopx ``/v1/templates``."""

from __future__ import annotations

from typing import Any

from agentplex.api.common.routing import Call, RouteTable
from agentplex.api.hopx.sandboxes import service
from agentplex.errors import Conflict

routes = RouteTable(tags=["hopx"])


def _view(template: Any) -> dict[str, Any]:
    data: dict[str, Any] = template.to_dict()
    data.setdefault("is_public", True)
    return data


@routes.get("/v1/templates", summary="List templates")
async def list_templates(call: Call) -> dict[str, Any]:
    templates = service(call).manager.templates
    return {"data": [_view(t) for t in templates.values()]}


@routes.get("/v1/templates/{template}", summary="Get a template by id or name")
async def get_template(call: Call) -> dict[str, Any]:
    return _view(service(call).template(call.path_params["template"]))


@routes.delete("/v1/templates/{template}", summary="Delete a custom template")
async def delete_template(call: Call) -> dict[str, Any]:
    template = service(call).template(call.path_params["template"])
    if getattr(template, "builtin", True):
        raise Conflict(f"Template {template.name!r} is built in and cannot be deleted")
    raise Conflict("Custom templates are not supported yet")
