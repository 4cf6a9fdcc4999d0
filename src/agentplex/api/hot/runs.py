"""Hot's runs: the list (``status``, ``type``, ``time_range``, ``project`` filters), stats,
one run, its captured vars, cancel, and ``/v1/runs/{run_id}/subscribe`` (SSE: the run's
snapshot, then its own stream items, until its terminal ``run:update``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import Field, TypeAdapter, ValidationError
from starlette.responses import Response

from agentplex.api.common.envelopes import hot_data, hot_list
from agentplex.api.common.routing import Call, RouteTable
from agentplex.api.common.sse import resume_cursor
from agentplex.api.hot.events import run_service
from agentplex.api.hot.projects import Page
from agentplex.api.hot.streams import StreamQuery, sse
from agentplex.api.hot.views import run_view, var_view
from agentplex.errors import BadRequest

routes = RouteTable(tags=["hot"])

_RUN = "/v1/runs/{run_id}"
_DURATION: TypeAdapter[timedelta] = TypeAdapter(timedelta)
_BAD_DURATION = "time_range must be an ISO 8601 duration such as P7D (7 days) or PT1H (1 hour)"
_ALL_TIME = timedelta(days=365 * 1000)  # a longer time_range keeps every run as well


class RunsQuery(Page):
    status: str | None = Field(
        None, description="queued, running, succeeded, failed or cancelled (comma-separated)"
    )
    type: str | None = Field(
        None, description="call, event, schedule, run, eval or repl (comma-separated)"
    )
    time_range: str | None = Field(
        None, description="Runs created within this ISO 8601 duration: P7D, PT1H, ..."
    )
    project: str | None = Field(None, description="A project's id or name")


def time_range(raw: str | None) -> timedelta | None:
    """An ISO 8601 duration (``P7D``, ``PT1H30M``); BadRequest for anything else."""
    if raw is None or not raw.strip():
        return None
    text = raw.strip()
    if not text.upper().startswith("P"):  # pydantic would also take "3600" or "1 day"
        raise BadRequest(f"{_BAD_DURATION}, not {raw!r}")
    try:
        value = _DURATION.validate_python(text)
    except (ValidationError, OverflowError):
        raise BadRequest(f"{_BAD_DURATION}, not {raw!r}") from None
    return min(value, _ALL_TIME) if value > timedelta(0) else value


def _run_id(call: Call) -> str:
    return str(call.path_params["run_id"])


@routes.get("/v1/runs", summary="List runs, newest first (Hot)", query=RunsQuery)
async def list_runs(call: Call) -> dict[str, Any]:
    query: RunsQuery = call.query
    found, total = await run_service(call).runs(
        call.principal.env_id,
        status=query.status,
        run_type=query.type,
        time_range=time_range(query.time_range),
        project=query.project,
        limit=query.limit,
        offset=query.offset,
    )
    return hot_list(
        [run_view(r) for r in found],
        total=total,
        limit=query.limit,
        offset=query.offset,
        request_id=call.request_id,
    )


# before `{run_id}`: the first route that matches wins
@routes.get("/v1/runs/stats", summary="Run counts by status (Hot)")
async def stats(call: Call) -> dict[str, Any]:
    """``{total_runs, queued, running, succeeded, failed, cancelled}``."""
    return hot_data(await run_service(call).stats(call.principal.env_id), call.request_id)


@routes.get(_RUN, summary="Get a run (Hot)")
async def get_run(call: Call) -> dict[str, Any]:
    run = await run_service(call).get(call.principal.env_id, _run_id(call))
    return hot_data(run_view(run), call.request_id)


@routes.get(_RUN + "/vars", summary="The values a run captured (Hot)", query=Page)
async def run_vars(call: Call) -> dict[str, Any]:
    page: Page = call.query
    found, total = await run_service(call).vars(
        call.principal.env_id, _run_id(call), limit=page.limit, offset=page.offset
    )
    return hot_list(
        [var_view(v) for v in found],
        total=total,
        limit=page.limit,
        offset=page.offset,
        request_id=call.request_id,
    )


@routes.post(_RUN + "/cancel", summary="Cancel a run (Hot)")
async def cancel(call: Call) -> dict[str, Any]:
    """200 with the run: a queued run is cancelled at once, a running one once its worker has
    stopped its code (within a second); a finished run is left as it is."""
    run = await run_service(call).cancel(call.principal.env_id, _run_id(call))
    return hot_data(run_view(run), call.request_id)


@routes.get(
    _RUN + "/subscribe",
    summary="Follow a run (Hot, SSE): its snapshot, then its items, until it is terminal",
    query=StreamQuery,
    media_type="text/event-stream",
)
async def subscribe(call: Call) -> Response:
    service = run_service(call)
    after = resume_cursor(call.request)
    run = await service.get(call.principal.env_id, _run_id(call))
    return sse(call, service.follow_run(run, after))
