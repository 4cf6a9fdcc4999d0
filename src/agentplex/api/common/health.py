"""Routes every reference shares: health probes, status and metrics.

Where two references claim one path the body is a superset that satisfies both: ``/health``
carries HotPlex's ``status/timestamp/uptime/checks`` and PAR's ``success/data``; ``/status``
carries Hot's and PAR's fields; ``/metrics`` is Prometheus text unless JSON is asked for.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, Response

from agentplex.api.common.envelopes import par_ok
from agentplex.api.common.metrics import cpu_percent, format_uptime, rss_bytes
from agentplex.api.common.routing import Call, RouteTable
from agentplex.core.clock import iso, utcnow

routes = RouteTable(tags=["health"])

_LIVE = b'{"status":"alive","success":true}'


@routes.get("/health", summary="Health check (HotPlex and PAR shapes)", public=True)
async def health(call: Call) -> Response:
    services = call.services
    problems = await services.health.checks()
    healthy = services.ready and not any(problems.values())
    status = "healthy" if healthy else "unhealthy"
    now = iso(utcnow())
    uptime = format_uptime(services.uptime_seconds)
    body = {
        "status": status,
        "timestamp": now,
        "uptime": uptime,
        "uptime_seconds": round(services.uptime_seconds, 3),
        "version": services.version,
        "checks": {name: problem or "ok" for name, problem in problems.items()},
        **par_ok(
            {
                "status": status,
                "runtime": "agentplex",
                "version": services.version,
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
    reason = await call.services.health.readiness()
    if reason:
        return JSONResponse({"status": "not_ready", "ready": False, "reason": reason}, 503)
    return JSONResponse({"status": "ready", "ready": True})


@routes.get("/status", summary="Server status (Hot and PAR shapes)", public=True)
async def status(call: Call) -> dict[str, Any]:
    services = call.services
    server = services.settings.server
    uptime = format_uptime(services.uptime_seconds)
    return {
        "status": "ok" if services.ready else "starting",
        "service": "agentplex api server",
        "version": services.version,
        "git_sha": services.git_sha,
        "start_time": iso(services.started_at),
        "database": services.db.url.get_backend_name(),
        "sandbox": services.sandbox_backend.status(),
        **par_ok(
            {
                "runtime": {
                    "mode": "multi-agent",
                    "version": services.version,
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
            par_ok(registry.par_json(call.services.started_monotonic), call.request_id)
        )
    return Response(registry.render(), media_type=registry.content_type)
