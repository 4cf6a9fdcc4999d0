"""The Pixell Agent Runtime surface."""

from __future__ import annotations

from fastapi import APIRouter

from agentplex.api.par import logs

router = APIRouter()
router.include_router(logs.router)
