"""Declaring routes: a Starlette route per endpoint, with pydantic validation of the query
and the JSON body, and the metadata the OpenAPI document is built from.

FastAPI does all this too, but costs several times a bare Starlette route per request; the
server's throughput target (>= 0.6 of bare Starlette) leaves no room for that.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, Router, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from agentplex.core.auth import Principal
from agentplex.errors import BadRequest
from agentplex.services import Services


class Call:
    """What a handler gets: the request, validated input and the core services."""

    __slots__ = ("body", "query", "request")

    def __init__(self, request: Request, query: Any, body: Any) -> None:
        self.request = request
        self.query = query
        self.body = body

    @property
    def services(self) -> Services:
        services: Services = self.request.app.state.services
        return services

    @property
    def request_id(self) -> str:
        return str(self.request.scope["state"].get("request_id", ""))

    @property
    def principal(self) -> Principal:
        principal: Principal = self.request.scope["state"]["principal"]
        return principal

    @property
    def path_params(self) -> dict[str, Any]:
        return self.request.path_params


Handler = Callable[[Call], Awaitable[Response | dict[str, Any] | list[Any]]]


@dataclass
class Endpoint:
    """One documented operation."""

    method: str
    path: str
    handler: Handler
    summary: str
    tags: list[str]
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    status: int = 200
    response: type[BaseModel] | None = None
    media_type: str = "application/json"
    public: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # a handler that takes the Starlette request itself (a proxy, a streamed body) instead of
    # a validated `Call`; documented like any other
    app: Callable[[Request], Awaitable[Response]] | None = None


def dumps(data: Any) -> bytes:
    """JSON bytes of ``data`` (orjson: several times faster than the standard library)."""
    return orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS)


def problems(error: ValidationError) -> list[str]:
    """Validation errors as ``where: what`` lines."""
    out = []
    for item in error.errors():
        where = ".".join(str(p) for p in item.get("loc", ())) or "body"
        out.append(f"{where}: {item.get('msg', 'invalid')}")
    return out


def _validate(model: type[BaseModel], data: Any, what: str) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = problems(exc)
        raise BadRequest(f"Invalid {what}: " + "; ".join(lines), details=lines) from None


async def read_json(request: Request) -> Any:
    """The request body parsed as JSON (an empty body is ``{}``); BadRequest for anything
    else. orjson also refuses what is not JSON or no handler can use: NaN and infinities,
    numbers beyond a double, lone surrogates, nesting deeper than 1024 (the standard library
    recurses until it fails)."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"Malformed JSON body: {exc}") from None


def _endpoint_app(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    query_model, body_model, status = endpoint.query, endpoint.body, endpoint.status
    # Most calls send no query string; validate the defaults once.
    empty_query: Any = None
    if query_model is not None:
        with contextlib.suppress(BadRequest):  # a model with required fields has no default
            empty_query = _validate(query_model, {}, "query parameters")

    async def app(request: Request) -> Response:
        if query_model is None or (empty_query is not None and not request.scope["query_string"]):
            query = empty_query
        else:
            query = _validate(query_model, dict(request.query_params), "query parameters")
        body = (
            _validate(body_model, await read_json(request), "request body")
            if body_model is not None
            else None
        )
        result = await endpoint.handler(Call(request, query, body))
        if isinstance(result, Response):
            return result
        return Response(dumps(result), status_code=status, media_type="application/json")

    return app


class RouteTable:
    """The endpoints of one surface (or part of one)."""

    def __init__(self, *, tags: list[str] | None = None) -> None:
        self.tags = tags or []
        self.endpoints: list[Endpoint] = []
        self.websockets: list[tuple[str, Callable[[WebSocket], Awaitable[None]], str]] = []

    def route(
        self, method: str, path: str, *, summary: str, **options: Any
    ) -> Callable[[Handler], Handler]:
        """Register ``handler`` for ``method path``."""

        def register(handler: Handler) -> Handler:
            self.endpoints.append(
                Endpoint(method, path, handler, summary, options.pop("tags", self.tags), **options)
            )
            return handler

        return register

    def raw(
        self,
        method: str,
        path: str,
        app: Callable[[Request], Awaitable[Response]],
        *,
        summary: str,
        **options: Any,
    ) -> None:
        """Register a handler that reads the request itself (``app(request) -> Response``)."""
        self.endpoints.append(
            Endpoint(
                method,
                path,
                _undocumented,
                summary,
                options.pop("tags", self.tags),
                app=app,
                **options,
            )
        )

    def get(self, path: str, *, summary: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, summary=summary, **options)

    def post(self, path: str, *, summary: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, summary=summary, **options)

    def put(self, path: str, *, summary: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, summary=summary, **options)

    def patch(self, path: str, *, summary: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("PATCH", path, summary=summary, **options)

    def delete(self, path: str, *, summary: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, summary=summary, **options)

    def websocket(
        self, path: str, *, summary: str
    ) -> Callable[[Callable[[WebSocket], Awaitable[None]]], Callable[[WebSocket], Awaitable[None]]]:
        def register(
            handler: Callable[[WebSocket], Awaitable[None]],
        ) -> Callable[[WebSocket], Awaitable[None]]:
            self.websockets.append((path, handler, summary))
            return handler

        return register

    def include(self, other: RouteTable) -> None:
        self.endpoints.extend(other.endpoints)
        self.websockets.extend(other.websockets)

    def routes(self, prefix: str = "") -> list[BaseRoute]:
        """Starlette routes; endpoints sharing a path share one route (so 405 works)."""
        by_path: dict[str, list[Endpoint]] = {}
        for endpoint in self.endpoints:
            by_path.setdefault(endpoint.path, []).append(endpoint)
        routes: list[BaseRoute] = []
        for path, endpoints in by_path.items():
            apps = {e.method: e.app or _endpoint_app(e) for e in endpoints}
            routes.append(Route(prefix + path, _dispatch(apps), methods=list(apps)))
        for path, handler, _summary in self.websockets:
            routes.append(WebSocketRoute(prefix + path, handler))
        return routes


async def _undocumented(_call: Call) -> dict[str, Any]:  # raw endpoints serve through `app`
    raise NotImplementedError


def _dispatch(
    apps: dict[str, Callable[[Request], Awaitable[Response]]],
) -> Callable[[Request], Awaitable[Response]]:
    if len(apps) == 1:
        return next(iter(apps.values()))
    if "GET" in apps:
        apps.setdefault("HEAD", apps["GET"])

    async def dispatch(request: Request) -> Response:
        return await apps[request.method](request)

    return dispatch


class SegmentRouter(Router):
    """A router that only tries the routes sharing the request's first path segment.

    Starlette tries every route in turn; with five surfaces' worth of routes that linear scan
    would dominate small requests. Routes are bucketed by their first literal segment (a route
    starting with a parameter lands in every bucket), and each bucket is a plain Router, so
    404/405 behave exactly as Starlette's.
    """

    def __init__(self, routes: list[BaseRoute], **kwargs: Any) -> None:
        super().__init__(routes=routes, redirect_slashes=False, **kwargs)
        self._index()

    def add_routes(self, routes: list[BaseRoute]) -> None:
        """Add routes ahead of the existing ones."""
        self.routes[:0] = routes
        self._index()

    def _index(self) -> None:
        buckets: dict[str, list[BaseRoute]] = {}
        wildcard: list[BaseRoute] = []
        for route in self.routes:
            first = getattr(route, "path", "/").split("/", 2)[1]
            if first.startswith("{") or not first:
                wildcard.append(route)
                for bucket in buckets.values():
                    bucket.append(route)
            else:
                buckets.setdefault(first, list(wildcard)).append(route)
        self._buckets = {
            name: Router(routes=bucket, redirect_slashes=False) for name, bucket in buckets.items()
        }
        self._rest = Router(routes=wildcard, redirect_slashes=False)

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await super().app(scope, receive, send)
            return
        scope.setdefault("router", self)
        path: str = scope["path"]
        end = path.find("/", 1)
        first = path[1:] if end < 0 else path[1:end]
        await self._buckets.get(first, self._rest).app(scope, receive, send)
