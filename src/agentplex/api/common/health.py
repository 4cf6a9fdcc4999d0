"""Routes every reference shares: health probes, status and metrics.

Where two references claim one path the body is a superset that satisfies both: ``/health``
carries HotPlex's ``status/timestamp/uptime/checks`` and PAR's ``success/data``; ``/status``
carries Hot's and PAR's fields; ``/metrics`` is Prometheus text unless JSON is asked for.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.responses import JSONResponse, Response

from agentplex.api.common.envelopes import par_ok
from agentplex.api.common.metrics import cpu_percent, format_uptime, rss_bytes
from agentplex.api.common.routing import Call, RouteTable
from agentplex.core.clock import iso, utcnow
from agentplex.db import migrate
from agentplex.runtime import Runtime

routes = RouteTable(tags=["health"])

_CHECK_TIMEOUT = 2.0
_LIVE = b'{"status":"alive","success":true}'


async def _check_database(runtime: Runtime) -> str | None:
    """None when the database is reachable and migrated, else the reason it is not."""
    try:
        current = await asyncio.wait_for(migrate.is_current(runtime.db), _CHECK_TIMEOUT)
    except Exception as exc:
        return f"database unreachable: {type(exc).__name__}: {exc}"[:300]
    if not current:
        return f"database not migrated to revision {migrate.head_revision()}"
    return None


async def _check_bus(runtime: Runtime) -> str | None:
    try:
        await asyncio.wait_for(runtime.bus.ping(), _CHECK_TIMEOUT)
    except Exception as exc:
        return f"bus unreachable: {type(exc).__name__}: {exc}"[:300]
    return None


@routes.get("/health", summary="Health check (HotPlex and PAR shapes)", public=True)
async def health(call: Call) -> Response:
    runtime = call.runtime
    problems = {"database": await _check_database(runtime), "bus": await _check_bus(runtime)}
    healthy = runtime.ready and not any(problems.values())
    status = "healthy" if healthy else "unhealthy"
    now = iso(utcnow())
    uptime = format_uptime(runtime.uptime_seconds)
    body = {
        "status": status,
        "timestamp": now,
        "uptime": uptime,
        "uptime_seconds": round(runtime.uptime_seconds, 3),
        "version": runtime.version,
        "checks": {name: problem or "ok" for name, problem in problems.items()},
        **par_ok(
            {
                "status": status,
                "runtime": "agentplex",
                "version": runtime.version,
                "uptime": uptime,
                "timestamp": now,
            },
            call.request_id,
        ),
    }
    body["success"] = healthy
    return JSONResponse(body, status_code=200 if healthy else 503)


@routes.get("/health/live", summary="Liveness probe: the process is serving", public=True)
async def live(call: Call) -> Response:
    return Response(_LIVE, media_type="application/json")


@routes.get(
    "/health/ready", summary="Readiness probe: database reachable and migrated", public=True
)
async def ready(call: Call) -> Response:
    runtime = call.runtime
    reason = None if runtime.ready else "server is starting"
    reason = reason or await _check_database(runtime) or await _check_bus(runtime)
    if reason:
        return JSONResponse({"status": "not_ready", "ready": False, "reason": reason}, 503)
    return JSONResponse({"status": "ready", "ready": True})


@routes.get("/status", summary="Server status (Hot and PAR shapes)", public=True)
async def status(call: Call) -> dict[str, Any]:
    runtime = call.runtime
    server = runtime.settings.server
    uptime = format_uptime(runtime.uptime_seconds)
    return {
        "status": "ok" if runtime.ready else "starting",
        "service": "agentplex api server",
        "version": runtime.version,
        "git_sha": runtime.git_sha,
        "start_time": iso(runtime.started_at),
        "database": runtime.db.url.get_backend_name(),
        "sandbox": runtime.sandbox_manager.status() if runtime.sandbox_manager else None,
        **par_ok(
            {
                "runtime": {
                    "mode": "multi-agent",
                    "version": runtime.version,
                    "uptime": uptime,
                    "memory_usage": f"{rss_bytes() // (1024 * 1024)}MB",
                    "cpu_usage": f"{cpu_percent():.0f}%",
                },
                "server": {"host": server.host, "port": call.request.url.port or server.port},
            },
            call.request_id,
        ),
    }


@routes.get(
    "/metrics",
    summary="Prometheus metrics (PAR JSON with Accept: application/json)",
    media_type="text/plain",
)
async def metrics(call: Call) -> Response:
    registry = call.request.app.state.metrics
    accept = call.request.headers.get("accept", "")
    if "application/json" in accept and "text/plain" not in accept:
        return JSONResponse(
            par_ok(registry.par_json(call.runtime.started_monotonic), call.request_id)
        )
    return Response(registry.render(), media_type=registry.content_type)
