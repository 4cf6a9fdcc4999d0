"""Hot's builds: ``/v1/builds`` and ``/v1/projects/{project}/builds`` (list, get, ``deployed``,
``live``, multipart upload, zip download, deploy), and the deployed build's
``event-handlers`` and ``schedules``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.responses import Response

from agentplex.api.common.envelopes import hot_data, hot_list
from agentplex.api.common.routing import Call, RouteTable, dumps
from agentplex.core.builds import Build, BuildService
from agentplex.core.clock import iso
from agentplex.errors import BadRequest

routes = RouteTable(tags=["hot"])

_PROJECT = "/v1/projects/{project_id_or_slug}"
_BUILD = _PROJECT + "/builds/{build_id}"
_MAX_LIMIT = 1000
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


class Page(BaseModel):
    limit: int = Field(20, ge=1, le=_MAX_LIMIT, description="Max results (default 20)")
    offset: int = Field(0, ge=0, le=1_000_000_000, description="Pagination offset")


def _builds(call: Call) -> BuildService:
    services: Any = call.services
    service: BuildService = services.builds
    return service


def build_view(build: Build, *, manifest: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {
        "build_id": build.build_id,
        "project_id": build.project_id,
        "project_name": build.project_name,
        "env_id": build.env_id,
        "hash": build.hash,
        "size": build.size,
        "build_type": build.build_type,
        "deployed": build.deployed,
        "live": build.live,
        "active": build.active,
        "storage_path": build.storage_path,
        "storage_backend": build.storage_backend,
        "deployed_at": iso(build.deployed_at),
        "created_at": iso(build.created_at),
        "updated_at": iso(build.updated_at),
    }
    if manifest:
        data["manifest"] = build.manifest.to_json()
    return data


def _ref(call: Call) -> str:
    return str(call.path_params["project_id_or_slug"])


def _page(call: Call, items: list[Any], total: int) -> dict[str, Any]:
    query: Page = call.query
    return hot_list(
        items, total=total, limit=query.limit, offset=query.offset, request_id=call.request_id
    )


@routes.get("/v1/builds", summary="List the environment's builds (Hot)", query=Page)
async def list_all(call: Call) -> dict[str, Any]:
    """Newest first, each with its ``project_name``."""
    query: Page = call.query
    found, total = await _builds(call).list_builds(
        call.principal.env_id, limit=query.limit, offset=query.offset
    )
    return _page(call, [build_view(b, manifest=False) for b in found], total)


@routes.get(_PROJECT + "/builds", summary="List a project's builds (Hot)", query=Page)
async def list_project(call: Call) -> dict[str, Any]:
    query: Page = call.query
    found, total = await _builds(call).list_builds(
        call.principal.env_id, _ref(call), limit=query.limit, offset=query.offset
    )
    return _page(call, [build_view(b, manifest=False) for b in found], total)


@routes.post(
    _PROJECT + "/builds",
    summary="Upload a build (Hot): multipart `file` (zip), `hash` (hex SHA-256), `build_id`?",
    status=201,
)
async def upload(call: Call) -> Response:
    """201 with the new build; the same ``build_id`` again: 200 with the stored one and
    ``X-Build-Exists: true``."""
    request = call.request
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadRequest(
            "Send the build as multipart/form-data with fields file (the zip), hash (its "
            "hex SHA-256) and optionally build_id (a UUID)."
        )
    async with request.form(max_files=1, max_fields=10) as form:
        file, claimed = form.get("file"), form.get("hash")
        build_id, live = form.get("build_id"), form.get("live")
        if not isinstance(file, UploadFile):
            raise BadRequest("Field file is missing: attach the build zip as file.")
        if not isinstance(claimed, str) or not claimed.strip():
            raise BadRequest("Field hash is missing: send the zip's SHA-256 in hex.")
        if build_id is not None and not isinstance(build_id, str):
            raise BadRequest("Field build_id must be a UUID string.")
        if live is not None and (
            not isinstance(live, str) or live.strip().lower() not in _TRUE | _FALSE
        ):
            raise BadRequest(f"Field live must be true or false, not {str(live)[:40]!r}.")
        data = await file.read()
    result = await _builds(call).upload(
        call.principal.env_id,
        _ref(call),
        data,
        claimed,
        build_id=build_id.strip() or None if build_id else None,
        live=isinstance(live, str) and live.strip().lower() in _TRUE,
    )
    body = dumps(hot_data(build_view(result.build), call.request_id))
    if result.existed:
        return Response(
            body, status_code=200, media_type="application/json", headers={"X-Build-Exists": "true"}
        )
    return Response(body, status_code=201, media_type="application/json")


# `deployed` and `live` come before `{build_id}`: the first route that matches wins
@routes.get(_PROJECT + "/builds/deployed", summary="The project's deployed build (Hot)")
async def deployed(call: Call) -> dict[str, Any]:
    """404 when the project has none."""
    build = await _builds(call).current(call.principal.env_id, _ref(call), "deployed")
    return hot_data(build_view(build), call.request_id)


@routes.get(_PROJECT + "/builds/live", summary="The project's live (development) build (Hot)")
async def live_build(call: Call) -> dict[str, Any]:
    """404 when the project has none (a build is live when uploaded with ``live=true``)."""
    build = await _builds(call).current(call.principal.env_id, _ref(call), "live")
    return hot_data(build_view(build), call.request_id)


@routes.get(_BUILD, summary="Get a build (Hot)")
async def get_build(call: Call) -> dict[str, Any]:
    build = await _builds(call).get(
        call.principal.env_id, _ref(call), str(call.path_params["build_id"])
    )
    return hot_data(build_view(build), call.request_id)


@routes.get(_BUILD + "/download", summary="Download a build's zip (Hot)")
async def download(call: Call) -> Response:
    """The archive as uploaded, ``application/zip``."""
    build, data = await _builds(call).download(
        call.principal.env_id, _ref(call), str(call.path_params["build_id"])
    )
    return Response(
        data,
        media_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="{build.build_id}.zip"',
            "ETag": f'"{build.hash}"',
        },
    )


@routes.post(_BUILD + "/deploy", summary="Deploy a build (Hot)")
async def deploy(call: Call) -> dict[str, Any]:
    """Marks the build deployed (the previous one no longer is) and registers its manifest's
    event handlers and schedules in place of the previous deployed build's."""
    build = await _builds(call).deploy(
        call.principal.env_id, _ref(call), str(call.path_params["build_id"])
    )
    return hot_data(build_view(build), call.request_id)


@routes.get(
    _PROJECT + "/event-handlers", summary="The deployed build's event handlers (Hot)", query=Page
)
async def list_event_handlers(call: Call) -> dict[str, Any]:
    query: Page = call.query
    rows, total = await _builds(call).entry_points(
        call.principal.env_id,
        _ref(call),
        "event_handlers",
        limit=query.limit,
        offset=query.offset,
    )
    items = [
        {
            "event_handler_id": r["event_handler_id"],
            "project_id": r["project_id"],
            "build_id": r["build_id"],
            "event_type": r["event_type"],
            "ns": r["ns"],
            "var": r["var"],
            "function": r["function"],
            "created_at": iso(r["created_at"]),
        }
        for r in rows
    ]
    return _page(call, items, total)


@routes.get(_PROJECT + "/schedules", summary="The deployed build's schedules (Hot)", query=Page)
async def list_schedules(call: Call) -> dict[str, Any]:
    query: Page = call.query
    rows, total = await _builds(call).entry_points(
        call.principal.env_id, _ref(call), "schedules", limit=query.limit, offset=query.offset
    )
    items = [
        {
            "schedule_id": r["schedule_id"],
            "project_id": r["project_id"],
            "build_id": r["build_id"],
            "cron": r["cron"],
            "tz": r["tz"],
            "ns": r["ns"],
            "var": r["var"],
            "function": r["function"],
            "created_at": iso(r["created_at"]),
        }
        for r in rows
    ]
    return _page(call, items, total)
