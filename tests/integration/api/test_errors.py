"""Bad input gets a clear error in the right envelope with the right status; never a 500."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from agentplex.api.common.routing import Call, RouteTable
from tests.conftest import SettingsFactory, open_client


class _Item(BaseModel):
    name: str
    count: int


def _add_echo_routes(client: httpx.AsyncClient) -> None:
    """JSON-body routes on each surface, to exercise the shared body handling."""
    api = client.app.app  # type: ignore[attr-defined]
    table = RouteTable()

    async def echo(call: Call) -> dict[str, Any]:
        return call.body.model_dump()

    for path in ("/v1/echo", "/api/v1/echo", "/agents/echo", "/session/echo", "/v1/sandboxes/echo"):
        table.post(path, summary="echo", body=_Item)(echo)
    api.router.add_routes(table.routes())


BAD_REQUEST = {
    "/v1/echo": lambda b: b["error"]["code"] == "bad_request",
    "/api/v1/echo": lambda b: b["error"]["code"] == "bad_request",
    "/agents/echo": lambda b: b["error"]["code"] == "INVALID_REQUEST",
    "/session/echo": lambda b: b["name"] == "BadRequest" and b["data"]["kind"] == "Payload",
    "/v1/sandboxes/echo": lambda b: b["code"] == "INVALID_REQUEST",
}


@pytest.mark.parametrize("path", list(BAD_REQUEST))
async def test_malformed_json_is_400_in_the_surface_envelope(
    client: httpx.AsyncClient, path: str
) -> None:
    _add_echo_routes(client)
    headers = {"Content-Type": "application/json"}
    malformed = await client.post(path, content=b'{"name": "x",', headers=headers)
    assert malformed.status_code == 400
    assert BAD_REQUEST[path](malformed.json()), malformed.json()
    invalid = await client.post(path, json={"name": "x", "count": "many"})
    assert invalid.status_code == 400
    assert "count" in invalid.text
    ok = await client.post(path, json={"name": "x", "count": 2})
    assert ok.json() == {"name": "x", "count": 2}


async def test_unknown_route_and_wrong_method(client: httpx.AsyncClient) -> None:
    missing = await client.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = await client.delete("/health")
    assert wrong.status_code == 405
    assert "GET" in wrong.json()["error"]["message"]
    assert "GET" in wrong.headers["allow"]


async def test_body_over_the_limit_is_413(make_settings: SettingsFactory) -> None:
    settings = make_settings(server={"max_body_bytes": 2048})
    async for client in open_client(settings):
        _add_echo_routes(client)
        big = {"name": "x" * 4096, "count": 1}
        declared = await client.post("/api/v1/echo", json=big)
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "payload_too_large"

        async def chunks():
            yield b'{"name": "'
            for _ in range(10):
                yield b"x" * 512
            yield b'", "count": 1}'

        chunked = await client.post(
            "/v1/echo", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert chunked.status_code == 413
        assert chunked.json()["error"]["code"] == "payload_too_large"


async def test_request_id_is_echoed_or_generated(client: httpx.AsyncClient) -> None:
    echoed = await client.get("/health/live", headers={"X-Request-ID": "req-123"})
    assert echoed.headers["x-request-id"] == "req-123"
    first = (await client.get("/api/v1/logs")).headers["x-request-id"]
    second = (await client.get("/api/v1/logs")).headers["x-request-id"]
    assert first and second and first != second
    hostile = await client.get("/health/live", headers={"X-Request-ID": "a b\tc"})
    assert hostile.headers["x-request-id"] != "a b\tc"


async def test_bad_query_parameters_are_400(client: httpx.AsyncClient) -> None:
    for query in ("limit=-1", "limit=abc", "level=loud", "since=yesterday"):
        response = await client.get(f"/api/v1/logs?{query}")
        assert response.status_code == 400, query
        assert response.json()["error"]["code"] == "bad_request"
    cursor = await client.get("/api/v1/logs/stream", headers={"Last-Event-ID": "x"})
    assert cursor.status_code == 400


@pytest.mark.parametrize(
    ("url", "envelope"),
    [
        ("/v1/projects/a%00b", "/v1/echo"),
        ("/v1/runs?project=%00", "/v1/echo"),
        ("/v1/projects/%00/builds/x", "/v1/echo"),
        ("/api/v1/sessions/a%00b", "/api/v1/echo"),
        ("/agents/a%00b", "/agents/echo"),
        ("/session/a%00b", "/session/echo"),
        ("/v1/sandboxes/a%00b", "/v1/sandboxes/echo"),
    ],
)
async def test_a_nul_in_the_url_is_a_400_on_every_backend(
    client: httpx.AsyncClient, url: str, envelope: str
) -> None:
    """PostgreSQL refuses a NUL in any text: it must never reach a query (it was a 500 there
    and a 404 on SQLite)."""
    answer = await client.get(url)
    assert answer.status_code == 400
    assert BAD_REQUEST[envelope](answer.json()), answer.json()
    assert "NUL" in answer.text
