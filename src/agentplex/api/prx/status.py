"""PRX ``/status`` and ``/status/health``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from agentplex.api.common.deps import RuntimeDep

router = APIRouter(tags=["prx"])


@router.get("/status", summary="Overall system status")
async def status(runtime: RuntimeDep) -> dict[str, Any]:
    return {
        "status": "healthy" if runtime.ready else "starting",
        "version": runtime.version,
        "uptime_secs": int(runtime.uptime_seconds),
        "active_sessions": 0,
        "channels": {"connected": 0, "total": 0},
        "plugins": {"loaded": 0, "total": 0},
        "memory": {"backend": runtime.db.url.get_backend_name(), "entries": 0},
        "provider": {"name": None, "model": None},
    }


@router.get("/status/health", summary="Lightweight health check")
async def status_health(runtime: RuntimeDep) -> dict[str, Any]:
    return {"healthy": runtime.ready}
