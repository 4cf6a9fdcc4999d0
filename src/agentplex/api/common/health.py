"""Routes every reference shares: health probes, status and metrics.

Where two references claim one path the body is a superset that satisfies both: ``/health``
carries HotPlex's ``status/timestamp/uptime/checks`` and PAR's ``success/data``; ``/status``
carries Hot's and PAR's fields; ``/metrics`` is Prometheus text unless JSON is asked for.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from agentplex.api.common.deps import RequestIdDep, RuntimeDep
from agentplex.api.common.envelopes import par_ok
from agentplex.api.common.metrics import cpu_percent, format_uptime, rss_bytes
from agentplex.core.clock import iso, utcnow
from agentplex.db import migrate
from agentplex.runtime import Runtime

router = APIRouter(tags=["health"])

_CHECK_TIMEOUT = 2.0
_HEAD = migrate.head_revision()


async def _check_database(runtime: Runtime) -> str | None:
    """None when the database is reachable and migrated, else the reason it is not."""
    try:
        current = await asyncio.wait_for(migrate.is_current(runtime.db), _CHECK_TIMEOUT)
    except Exception as exc:
        return f"database unreachable: {type(exc).__name__}: {exc}"[:300]
    if not current:
        return f"database not migrated to revision {_HEAD}"
    return None


async def _check_bus(runtime: Runtime) -> str | None:
    try:
        await asyncio.wait_for(runtime.bus.ping(), _CHECK_TIMEOUT)
    except Exception as exc:
        return f"bus unreachable: {type(exc).__name__}: {exc}"[:300]
    return None


@router.get("/health", summary="Health check (HotPlex and PAR shapes)")
async def health(runtime: RuntimeDep, request_id: RequestIdDep) -> JSONResponse:
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
            request_id,
        ),
    }
    body["success"] = healthy
    return JSONResponse(body, status_code=200 if healthy else 503)


@router.get("/health/live", summary="Liveness probe: the process is serving")
async def live() -> dict[str, Any]:
    return {"status": "alive", "success": True}


@router.get("/health/ready", summary="Readiness probe: database reachable and migrated")
async def ready(runtime: RuntimeDep) -> JSONResponse:
    reason = None if runtime.ready else "server is starting"
    reason = reason or await _check_database(runtime) or await _check_bus(runtime)
    if reason:
        return JSONResponse({"status": "not_ready", "ready": False, "reason": reason}, 503)
    return JSONResponse({"status": "ready", "ready": True})


@router.get("/status", summary="Server status (Hot and PAR shapes)")
async def status(runtime: RuntimeDep, request: Request, request_id: RequestIdDep) -> dict[str, Any]:
    server = runtime.settings.server
    uptime = format_uptime(runtime.uptime_seconds)
    return {
        "status": "ok" if runtime.ready else "starting",
        "service": "agentplex api server",
        "version": runtime.version,
        "git_sha": runtime.git_sha,
        "start_time": iso(runtime.started_at),
        "database": runtime.db.url.get_backend_name(),
        **par_ok(
            {
                "runtime": {
                    "mode": "multi-agent",
                    "version": runtime.version,
                    "uptime": uptime,
                    "memory_usage": f"{rss_bytes() // (1024 * 1024)}MB",
                    "cpu_usage": f"{cpu_percent():.0f}%",
                },
                "server": {"host": server.host, "port": request.url.port or server.port},
            },
            request_id,
        ),
    }


@router.get(
    "/metrics",
    summary="Prometheus metrics (PAR JSON with Accept: application/json)",
    response_class=Response,
)
async def metrics(request: Request, runtime: RuntimeDep, request_id: RequestIdDep) -> Response:
    registry = request.app.state.metrics
    accept = request.headers.get("accept", "")
    if "application/json" in accept and "text/plain" not in accept:
        return JSONResponse(par_ok(registry.par_json(runtime.started_monotonic), request_id))
    return Response(registry.render(), media_type=registry.content_type)
