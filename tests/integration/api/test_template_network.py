"""A template build runs with internet access, and so outbound only: its steps reach neither
the host's loopback services (PostgreSQL, the server itself) nor its private networks."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from agentplex.settings import Settings
from tests.conftest import LiveServer, SettingsFactory


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(sandbox={"pool_size": 0})


def _build(http: httpx.Client, name: str, command: str) -> dict[str, Any]:
    steps = [{"type": "RUN", "args": [command]}]
    build = http.post("/v1/templates/build", json={"name": name, "steps": steps})
    assert build.status_code == 200, build.text
    deadline = time.monotonic() + 90
    while True:
        status = http.get(f"/v1/templates/build/{build.json()['build_id']}/status").json()
        if status["status"] != "building":
            return dict(status)
        assert time.monotonic() < deadline, status
        time.sleep(0.2)


def test_build_steps_cannot_reach_the_host(live_server: LiveServer) -> None:
    port = urlsplit(live_server.url).port
    with httpx.Client(base_url=live_server.url, timeout=60) as http:
        # the server's own port on the host's loopback (it answered such builds before)
        own = _build(http, "reach-server", f"curl -sS -m 5 http://127.0.0.1:{port}/health")
        assert own["status"] == "failed", own
        assert "couldn't connect to server" in own["error_message"].lower(), own
        # the host's PostgreSQL (with it, `COPY ... TO PROGRAM` ran commands on the host)
        sql = "psql -h 127.0.0.1 -U postgres -d test -w -c 'SELECT 1'"
        database = _build(http, "reach-postgres", sql)
        assert database["status"] == "failed", database
        assert "refused" in database["error_message"].lower(), database
