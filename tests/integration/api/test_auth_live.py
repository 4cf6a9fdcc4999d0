"""Auth on a real server on a loopback port: decided before the first request is served, and
never switched off again once a key has existed."""

from __future__ import annotations

import asyncio
import time

import httpx

from agentplex.core import apikeys, environments
from agentplex.db import migrate
from agentplex.db.engine import Database
from agentplex.settings import Settings
from tests.conftest import LiveServer, SettingsFactory


async def _create_key(settings: Settings) -> str:
    db = Database(settings.database_url)
    try:
        await migrate.upgrade(db)
        async with db.write() as conn:
            env = await environments.ensure_default(conn)
            _key, plaintext = await apikeys.create(conn, env.id, "live")
        return plaintext
    finally:
        await db.dispose()


async def _revoke(settings: Settings, key: str) -> None:
    db = Database(settings.database_url)
    try:
        async with db.write() as conn:
            await apikeys.revoke(conn, key[:12])
    finally:
        await db.dispose()


async def _burst(url: str, count: int) -> list[int]:
    """``count`` unauthenticated requests at once, each on its own connection."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        answers = await asyncio.gather(
            *(client.get("/v1/sandboxes") for _ in range(count // 2)),
            *(
                client.post("/v1/sandboxes", json={"template_name": "bash"})
                for _ in range(count // 2)
            ),
        )
    return [a.status_code for a in answers]


def test_no_request_is_served_before_auth_is_decided(make_settings: SettingsFactory) -> None:
    settings = make_settings(
        rate_limit={"enabled": False}, sandbox={"enabled": False}, auth={"cache_seconds": 0}
    )
    asyncio.run(_create_key(settings))
    # A fresh server each round: the first burst lands while its first key lookup runs.
    for _ in range(3):
        with LiveServer(settings) as server:
            statuses = asyncio.run(_burst(server.url, 150))
        assert set(statuses) == {401}, sorted(statuses)


def test_revoking_the_last_key_keeps_auth_on_also_after_a_restart(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(
        rate_limit={"enabled": False}, sandbox={"enabled": False}, auth={"cache_seconds": 0.2}
    )
    key = asyncio.run(_create_key(settings))
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.get("/v1/sandboxes", headers={"X-API-Key": key}).status_code == 200
        assert http.get("/v1/sandboxes").status_code == 401
        asyncio.run(_revoke(settings, key))
        time.sleep(1.5)  # well past the key cache (0.2 s) and the key-count refresh (0.5 s)
        for path in ("/v1/sandboxes", "/api/v1/logs", "/logs", "/v1/sandboxes/sbx_x/execute"):
            assert http.get(path).status_code == 401, path
        assert http.get("/v1/sandboxes", headers={"X-API-Key": key}).status_code == 401
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.get("/v1/sandboxes").status_code == 401
        assert http.post("/v1/sandboxes", json={}).status_code == 401
