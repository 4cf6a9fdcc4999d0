"""Routes every reference shares: health probes, status and metrics.

Where two references claim one path the body is a superset that satisfies both: ``/health``
carries HotPlex's ``status/timestamp/uptime/checks`` and PAR's ``success/data``; ``/status``
carries Hot's and PAR's fields; ``/metrics`` is Prometheus text unless JSON is asked for.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, Response

from agentplex.api.common.envelopes import par_ok
from agentplex.api.common.gateway import credential_from
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
    """Public: what Hot's and PAR's probes read (status, service, version, start time,
    uptime). With a key (or while authentication is off) also the server's internals: the
    database backend, the sandbox layer's isolation, pool and sandbox count, the bind address.
    """
    services = call.services
    server = services.settings.server
    uptime = format_uptime(services.uptime_seconds)
    runtime: dict[str, Any] = {
        "mode": "multi-agent",
        "version": services.version,
        "uptime": uptime,
        "memory_usage": f"{rss_bytes() // (1024 * 1024)}MB",
        "cpu_usage": f"{cpu_percent():.0f}%",
    }
    port = call.request.url.port or server.port
    body: dict[str, Any] = {
        "status": "ok" if services.ready else "starting",
        "service": "agentplex api server",
        "version": services.version,
        "git_sha": services.git_sha,
        "start_time": iso(services.started_at),
        **par_ok({"runtime": runtime, "server": {"port": port}}, call.request_id),
    }
    if await _trusted(call):
        body["database"] = services.db.url.get_backend_name()
        body["sandbox"] = services.sandbox_backend.status()
        body["runs"] = services.engine.status()
        body["data"]["server"]["host"] = server.host
    return body


async def _trusted(call: Call) -> bool:
    """Whether the caller of a public route may see the server's internals: it sent a valid
    key of this server (not a sandbox's data-plane token), or authentication is off."""
    auth = call.services.auth
    if not await auth.required():
        return True
    principal = await auth.authenticate(credential_from(call.request.scope["headers"]))
    return principal is not None and principal.sandbox_id is None


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
