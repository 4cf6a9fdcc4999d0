"""PRX ``/status`` and ``/status/health``."""

from __future__ import annotations

from typing import Any

from agentplex.api.common.routing import Call, RouteTable

routes = RouteTable(tags=["prx"])


@routes.get("/status", summary="Overall system status")
async def status(call: Call) -> dict[str, Any]:
    services = call.services
    return {
        "status": "healthy" if services.ready else "starting",
        "version": services.version,
        "uptime_secs": int(services.uptime_seconds),
        "active_sessions": 0,
        "channels": {"connected": 0, "total": 0},
        "plugins": {"loaded": 0, "total": 0},
        "memory": {"backend": services.db.url.get_backend_name(), "entries": 0},
        "provider": {"name": None, "model": None},
    }


@routes.get("/status/health", summary="Lightweight health check")
async def status_health(call: Call) -> dict[str, Any]:
    return {"healthy": call.services.ready}
