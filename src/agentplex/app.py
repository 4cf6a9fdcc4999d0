"""The ASGI application: every surface mounted on one FastAPI app behind the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp

from agentplex import __version__
from agentplex.api import par, prx
from agentplex.api.common import errors, health
from agentplex.api.common.gateway import Gateway
from agentplex.api.common.metrics import Metrics
from agentplex.api.common.ratelimit import RateLimiter
from agentplex.runtime import Runtime
from agentplex.settings import Settings

_DESCRIPTION = """\
One server, five agent-runtime APIs: HotPlex/OpenCode sessions, Hot projects and runs,
PRX gateway, Hopx sandboxes and Pixell PAR agents.

Authenticate with `Authorization: Bearer <key>` or `X-API-Key: <key>`
(create one with `agentplex auth token`). `/health*` and `/status` are public.
"""


def create_app(settings: Settings) -> ASGIApp:
    """Build the application for ``settings``; state is created on lifespan start."""
    runtime = Runtime(settings)
    metrics = Metrics()
    limiter = RateLimiter(settings.rate_limit)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    api = FastAPI(
        title="agentplex",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    api.state.runtime = runtime
    api.state.metrics = metrics
    api.state.limiter = limiter
    metrics.gauge(
        "agentplex_log_entries", "Entries held in the log store.", lambda: len(runtime.logs)
    )
    errors.install(api)
    api.include_router(health.router)
    api.include_router(prx.router, prefix="/api/v1")
    api.include_router(prx.router, prefix="/api", include_in_schema=False)
    api.include_router(par.router)

    return Gateway(
        api,
        authenticator=runtime.auth,
        limiter=limiter,
        metrics=metrics,
        max_body_bytes=settings.server.max_body_bytes,
        public_docs=settings.auth.public_docs,
    )
