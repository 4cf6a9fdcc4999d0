"""The ASGI application: every surface mounted on one Starlette app behind the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from agentplex import __version__
from agentplex.api import hopx, hot, opencode, par, prx
from agentplex.api.common import errors, health, openapi
from agentplex.api.common.gateway import Gateway
from agentplex.api.common.metrics import Metrics
from agentplex.api.common.ratelimit import RateLimiter
from agentplex.api.common.routing import Endpoint, RouteTable, SegmentRouter
from agentplex.core.ports import SandboxBackend
from agentplex.services import build_services
from agentplex.settings import Settings

_DESCRIPTION = """\
One server, five agent-runtime APIs: HotPlex/OpenCode sessions, Hot projects and runs,
PRX gateway, Hopx sandboxes and Pixell PAR agents.

Authenticate with `Authorization: Bearer <key>` or `X-API-Key: <key>`
(create one with `agentplex auth token`). `/health*` and `/status` are public.
"""

# (prefix, table, documented): where each surface's routes are mounted.
_MOUNTS: list[tuple[str, RouteTable, bool]] = [
    ("", health.routes, True),
    ("/api/v1", prx.routes, True),
    ("/api", prx.routes, False),  # PRX alias
    ("", par.routes, True),
    ("", hopx.routes, True),
    ("", hot.routes, True),
    ("", opencode.routes, True),
]


def create_app(settings: Settings, backend: SandboxBackend | None = None) -> ASGIApp:
    """Build the application for ``settings`` (``backend`` replaces the configured sandbox
    adapter); services start with the lifespan."""
    services = build_services(settings, backend)
    metrics = Metrics()
    limiter = RateLimiter(settings.rate_limit)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await services.start()
        try:
            yield
        finally:
            await services.stop()

    documented: list[tuple[str, Endpoint]] = []
    routes: list[BaseRoute] = []
    for prefix, table, listed in _MOUNTS:
        routes.extend(table.routes(prefix))
        if listed:
            documented.extend((prefix, e) for e in table.endpoints)
    spec: dict[str, Any] = openapi.build("agentplex", __version__, _DESCRIPTION, documented)

    async def openapi_json(_request: Request) -> Response:
        return JSONResponse(spec)

    async def docs(_request: Request) -> Response:
        return HTMLResponse(openapi.SWAGGER_HTML)

    routes += [Route("/openapi.json", openapi_json), Route("/docs", docs)]
    routes += [_asset(path, name) for path, name in openapi.SWAGGER_ASSETS.items()]
    app = Starlette(lifespan=lifespan, exception_handlers=errors.HANDLERS)
    app.router = SegmentRouter(routes, lifespan=lifespan)
    app.state.services = services
    app.state.metrics = metrics
    app.state.limiter = limiter
    metrics.gauge(
        "agentplex_log_entries", "Entries held in the log store.", lambda: len(services.logs)
    )
    gateway = Gateway(
        app,
        authenticator=services.auth,
        limiter=limiter,
        metrics=metrics,
        max_body_bytes=settings.server.max_body_bytes,
        public_docs=settings.auth.public_docs,
    )
    if settings.auth.public_docs:  # the page's own files are as public as the page
        gateway.public = gateway.public | frozenset(openapi.SWAGGER_ASSETS)
    return gateway


def _asset(path: str, name: str) -> Route:
    """One of Swagger UI's files, served from the installed package (cacheable for a day)."""
    file = openapi.SWAGGER_DIR / name

    async def asset(_request: Request) -> Response:
        return FileResponse(file, headers={"Cache-Control": "public, max-age=86400"})

    return Route(path, asset)
