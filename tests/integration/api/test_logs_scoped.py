"""The log store on a real server: each caller reads its own environment's lines (the
operator's environment also the server's own), and nothing stored carries a query string, a
credential or a colour code."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid

import httpx
import pytest

from agentplex.core import apikeys, environments
from agentplex.core.clock import new_id, utcnow
from agentplex.db import migrate, tables
from agentplex.db.engine import Database
from agentplex.settings import Settings
from tests.conftest import LiveServer, SettingsFactory


async def _keys(settings: Settings) -> tuple[str, str]:
    """A key of the default environment and one of another environment."""
    db = Database(settings.database_url)
    try:
        await migrate.upgrade(db)
        async with db.write() as conn:
            default = await environments.ensure_default(conn)
            other = new_id()
            await conn.execute(
                tables.environments.insert().values(
                    id=other, org_id=new_id(), name="other", active=True, created_at=utcnow()
                )
            )
            _k, default_key = await apikeys.create(conn, default.id, "default")
            _k, other_key = await apikeys.create(conn, other, "other")
        return default_key, other_key
    finally:
        await db.dispose()


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(
        log={"access_log": True}, rate_limit={"enabled": False}, sandbox={"enabled": False}
    )


@pytest.fixture
def keys(settings: Settings) -> tuple[str, str]:
    return asyncio.run(_keys(settings))


@pytest.fixture
def server(settings: Settings, keys: tuple[str, str]) -> LiveServer:
    return LiveServer(settings)


def _messages(http: httpx.Client, key: str, path: str = "/api/v1/logs", **params: str) -> str:
    answer = http.get(path, params={"limit": "10000", **params}, headers={"X-API-Key": key})
    assert answer.status_code == 200, answer.text
    return answer.text


def test_each_environment_reads_only_its_own_lines(
    server: LiveServer, keys: tuple[str, str]
) -> None:
    default_key, other_key = keys
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        mine, theirs = "sbx_" + uuid.uuid4().hex, "sbx_" + uuid.uuid4().hex
        assert (
            http.get(f"/v1/sandboxes/{mine}", headers={"X-API-Key": other_key}).status_code == 404
        )
        assert (
            http.get(f"/v1/sandboxes/{theirs}", headers={"X-API-Key": default_key}).status_code
            == 404
        )
        logging.getLogger("agentplex.test.server").warning("a line of the server %s", mine)

        other_reads = _messages(http, other_key) + _messages(http, other_key, "/logs")
        assert mine in other_reads.split("a line of the server")[0]  # its own request
        assert theirs not in other_reads  # the default environment's request
        assert "a line of the server" not in other_reads  # the server's own lines

        default_reads = _messages(http, default_key) + _messages(http, default_key, "/logs")
        assert theirs in default_reads and "a line of the server" in default_reads
        assert f"/v1/sandboxes/{mine}" not in default_reads


def _follow(url: str, key: str, path: str, found: list[str], stop: threading.Event) -> None:
    with (
        httpx.Client(base_url=url, timeout=30, headers={"X-API-Key": key}) as http,
        http.stream("GET", path) as stream,
    ):
        for line in stream.iter_lines():
            if line.startswith("data:"):
                found.append(json.loads(line[5:])["message"])
            if stop.is_set():
                return


@pytest.mark.parametrize("path", ["/api/v1/logs/stream", "/api/v1/logs?stream=true"])
def test_log_streams_carry_only_the_callers_lines(
    server: LiveServer, keys: tuple[str, str], path: str
) -> None:
    default_key, other_key = keys
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        found: list[str] = []
        stop = threading.Event()
        follower = threading.Thread(
            target=_follow, args=(server.url, other_key, path, found, stop), daemon=True
        )
        follower.start()
        time.sleep(0.5)  # the stream is open
        theirs, mine = uuid.uuid4().hex, uuid.uuid4().hex
        http.get(f"/v1/sandboxes/sbx_{theirs}", headers={"X-API-Key": default_key})
        http.get(f"/v1/sandboxes/sbx_{mine}", headers={"X-API-Key": other_key})
        deadline = time.monotonic() + 20
        while not any(mine in m for m in found):
            assert time.monotonic() < deadline, found
            time.sleep(0.05)
        stop.set()
        http.get("/v1/sandboxes/sbx_x", headers={"X-API-Key": other_key})  # wakes the stream
        follower.join(10)
    assert not any(theirs in m for m in found), found


def test_no_query_string_credential_or_colour_code_is_logged(
    server: LiveServer, keys: tuple[str, str]
) -> None:
    default_key, _ = keys
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        marker = uuid.uuid4().hex
        http.get(
            f"/v1/sandboxes/sbx_{marker}",
            params={"token": "sbt_secretsecret", "api_key": default_key},
            headers={"X-API-Key": default_key},
        )
        logging.getLogger("agentplex.test.server").warning(
            "calling http://host/x?token=%s with Bearer %s", "querysecret", default_key
        )
        logged = _messages(http, default_key, level="debug")
        assert f"/v1/sandboxes/sbx_{marker}" in logged
        for secret in ("sbt_secretsecret", default_key, "querysecret", "token="):
            assert secret not in logged
        # uvicorn's startup lines come with a coloured copy; neither is stored
        assert "Uvicorn running on" in logged or "Application startup complete" in logged
        assert "\\u001b" not in logged and "\x1b" not in logged and "color_message" not in logged
