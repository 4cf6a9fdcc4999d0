"""The PRX gateway surface, at /api/v1 (and /api as an alias)."""

from __future__ import annotations

from fastapi import APIRouter

from agentplex.api.prx import logs, status

router = APIRouter()
router.include_router(status.router)
router.include_router(logs.router)
