"""The Hopx control plane over real bubblewrap sandboxes, through a loopback server."""

from __future__ import annotations

import asyncio
import http.client
import json
import time

import httpx
import pytest

from agentplex.core import apikeys, environments
from agentplex.core.clock import new_id, utcnow
from agentplex.db import tables
from agentplex.db.engine import Database
from agentplex.settings import Settings
from tests.conftest import LiveServer, SettingsFactory


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(sandbox={"pool_size": 1, "sweep_seconds": 0.2})


def _create(http: httpx.Client, **body: object) -> dict:
    response = http.post("/v1/sandboxes", json={"template_name": "bash", **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_lifecycle_bodies_and_states(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        created = _create(http, env_vars={"A": "1"}, timeout_seconds=600)
        assert created["status"] == "running"
        assert created["auth_token"].startswith("sbt_") and created["token_expires_at"]
        assert created["public_host"] == f"{live_server.url}/sandboxes/{created['id']}"
        assert set(created) >= {"template_id", "resources", "internet_access", "expires_at"}
        sid, token = created["id"], created["auth_token"]
        data = httpx.Client(
            base_url=created["public_host"],
            timeout=30,
            headers={"Authorization": f"Bearer {token}"},
        )
        assert data.get("/health").json()["status"] == "healthy"
        data.post("/files/write", json={"path": "/workspace/keep.txt", "content": "kept"})

        assert http.post(f"/v1/sandboxes/{sid}/stop").json()["status"] == "stopped"
        blocked = data.post("/execute", json={"language": "bash", "code": "echo hi"})
        assert blocked.status_code == 409 and blocked.json()["code"] == "INVALID_STATE"
        assert http.post(f"/v1/sandboxes/{sid}/start").json()["status"] == "running"
        assert (
            data.get("/files/read", params={"path": "/workspace/keep.txt"}).json()["content"]
            == "kept"
        )

        paused = http.post(f"/v1/sandboxes/{sid}/pause")
        assert paused.json()["status"] == "paused"
        again = http.post(f"/v1/sandboxes/{sid}/pause")
        assert again.status_code == 409 and again.json()["code"] == "INVALID_STATE"
        assert http.post(f"/v1/sandboxes/{sid}/resume").json()["status"] == "running"

        refreshed = http.post(f"/v1/sandboxes/{sid}/token/refresh").json()
        assert refreshed["auth_token"] != token

        listing = http.get("/v1/sandboxes", params={"limit": 1}).json()
        assert listing["data"][0]["id"] == sid and listing["has_more"] is False
        assert http.get("/v1/sandboxes", params={"status": "paused"}).json()["data"] == []

        deleted = http.delete(f"/v1/sandboxes/{sid}")
        assert deleted.status_code == 200 and deleted.json()["status"] == "deleted"
        missing = http.get(f"/v1/sandboxes/{sid}")
        assert missing.status_code == 404 and missing.json()["code"] == "SANDBOX_NOT_FOUND"
        data.close()


def test_bad_input_is_answered_in_the_hopx_envelope(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        unknown = http.post("/v1/sandboxes", json={"template_name": "cobol"})
        assert unknown.status_code == 404 and unknown.json()["code"] == "TEMPLATE_NOT_FOUND"
        bad = http.post("/v1/sandboxes", json={"timeout_seconds": "soon"})
        assert bad.status_code == 400 and bad.json()["code"] == "INVALID_REQUEST"
        malformed = http.post(
            "/v1/sandboxes", content=b"{", headers={"content-type": "application/json"}
        )
        assert malformed.status_code == 400
        assert http.get("/v1/sandboxes", params={"cursor": "!!"}).status_code == 400
        builtin = http.delete("/v1/templates/python")
        assert builtin.status_code == 409
        assert http.get("/v1/templates/python").json()["language"] == "python"


def test_timeout_is_enforced(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        sid = _create(http, timeout_seconds=1)["id"]
        deadline = time.monotonic() + 10
        while http.get(f"/v1/sandboxes/{sid}").json()["status"] != "stopped":
            assert time.monotonic() < deadline, "sandbox outlived its timeout"
            time.sleep(0.2)
        assert http.get(f"/v1/sandboxes/{sid}").json()["status_reason"] == "timeout expired"


def test_tokens_are_scoped_to_their_sandbox(make_settings: SettingsFactory) -> None:
    settings = make_settings(sandbox={"pool_size": 1}, auth={"api_key": "admin-key"})
    with (
        LiveServer(settings) as server,
        httpx.Client(base_url=server.url, timeout=30, headers={"X-API-Key": "admin-key"}) as http,
    ):
        one, two = _create(http), _create(http)
        own = {"Authorization": f"Bearer {one['auth_token']}"}
        ok = httpx.post(
            f"{one['public_host']}/commands/run",
            json={"command": "echo ok"},
            headers=own,
            timeout=30,
        )
        assert ok.status_code == 200 and ok.json()["stdout"].strip() == "ok"
        other = httpx.post(
            f"{two['public_host']}/commands/run",
            json={"command": "echo x"},
            headers=own,
            timeout=30,
        )
        assert other.status_code == 403
        control = httpx.get(f"{server.url}/v1/sandboxes", headers=own)
        assert control.status_code == 401
        # an API key of the environment also opens the data plane
        by_key = httpx.post(
            f"{two['public_host']}/commands/run",
            json={"command": "echo k"},
            headers={"X-API-Key": "admin-key"},
            timeout=30,
        )
        assert by_key.json()["stdout"].strip() == "k"
        hidden = httpx.post(f"{two['public_host']}/_reset", headers={"X-API-Key": "admin-key"})
        assert hidden.status_code == 404


def test_sandboxes_come_back_stopped_after_a_restart(settings: Settings) -> None:
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        created = _create(http)
        sid = created["id"]
        httpx.post(
            f"{created['public_host']}/files/write",
            timeout=30,
            headers={"Authorization": f"Bearer {created['auth_token']}"},
            json={"path": "/workspace/state.txt", "content": "survives"},
        )
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        record = http.get(f"/v1/sandboxes/{sid}").json()
        assert record["status"] == "stopped"
        assert "restarted" in record["status_reason"]
        assert http.post(f"/v1/sandboxes/{sid}/start").json()["status"] == "running"
        read = httpx.get(
            f"{server.url}/sandboxes/{sid}/files/read",
            timeout=30,
            params={"path": "/workspace/state.txt"},
        )
        assert read.json()["content"] == "survives"
        http.delete(f"/v1/sandboxes/{sid}")


def test_keys_of_another_environment_see_nothing(make_settings: SettingsFactory) -> None:
    settings = make_settings(sandbox={"pool_size": 1}, auth={"api_key": "admin-key"})

    async def other_environment_key() -> str:
        db = Database(settings.database.url.get_secret_value())
        try:
            async with db.write() as conn:
                env = environments.Environment(new_id(), new_id(), "other", True, 5, 100, utcnow())
                await conn.execute(tables.environments.insert().values(**environments._row(env)))
                _key, plaintext = await apikeys.create(conn, env.id, "other")
        finally:
            await db.dispose()
        return plaintext

    with (
        LiveServer(settings) as server,
        httpx.Client(base_url=server.url, timeout=30, headers={"X-API-Key": "admin-key"}) as http,
    ):
        sandbox = _create(http)
        # its own key reaches it (and the proxy remembers whose it is)
        ok = http.post(f"{sandbox['public_host']}/commands/run", json={"command": "echo ok"})
        assert ok.json()["stdout"].strip() == "ok"
        foreign = {"X-API-Key": asyncio.run(other_environment_key())}
        for method, url in (
            ("POST", f"{sandbox['public_host']}/commands/run"),
            ("GET", f"{sandbox['public_host']}/files/list?path=/workspace"),
            ("GET", f"{server.url}/v1/sandboxes/{sandbox['id']}"),
            ("DELETE", f"{server.url}/v1/sandboxes/{sandbox['id']}"),
        ):
            response = httpx.request(
                method, url, headers=foreign, json={"command": "echo x"}, timeout=30
            )
            assert response.status_code == 404, (method, url, response.text)
            assert response.json()["code"] == "SANDBOX_NOT_FOUND"
        assert http.get(f"/v1/sandboxes/{sandbox['id']}").json()["status"] == "running"


def _raw(server: LiveServer, method: str, path: str) -> tuple[int, dict]:
    """A request whose path goes out exactly as written (httpx would resolve dot segments)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=b"{}", headers={"content-type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def test_data_plane_paths_cannot_reach_host_routes_or_break_the_proxy(
    live_server: LiveServer,
) -> None:
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        sandbox = _create(client)
    base = f"/sandboxes/{sandbox['id']}"
    for path in (
        "/x/../_reset",
        "/x/%2E%2E/_warm",
        "/%5Freset",
        "/./_configure",
        "//x/_reset",  # the HTTP client would read "x" as a host and send /_reset
        "///x/_configure",
        "//_warm",
    ):
        status, body = _raw(live_server, "POST", base + path)
        assert status == 404, (path, body)
        assert body["code"] == "NOT_FOUND" and "request_id" in body
    # control characters and other oddities, percent-encoded: a clear 4xx, never a 500
    for path in ("/%08%F3%9E%97%B9", "/files/read%00", "/%C3%88T%0D%02"):
        status, body = _raw(live_server, "POST", base + path)
        assert 400 <= status < 500, (path, status, body)
        assert body.get("code"), body
    # a file name with a space and a '#' travels intact
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        wrote = client.post(
            f"{sandbox['public_host']}/files/write",
            json={"path": "/workspace/a b#c.txt", "content": "ok"},
        )
        assert wrote.status_code == 200, wrote.text
        read = client.get(
            f"{sandbox['public_host']}/files/read", params={"path": "/workspace/a b#c.txt"}
        )
        assert read.json()["content"] == "ok"
        assert client.get("/health").json()["status"] == "healthy"


def test_every_issued_token_keeps_working_until_its_own_expiry(live_server: LiveServer) -> None:
    # the JavaScript SDK refreshes the token on every Sandbox.connect and on a 401, and the
    # objects that hold the earlier tokens go on using them
    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        created = _create(http)
        sid = created["id"]
        tokens = [created["auth_token"]]
        for _ in range(3):
            refreshed = http.post(f"/v1/sandboxes/{sid}/token/refresh").json()
            assert refreshed["token_expires_at"]
            tokens.append(refreshed["auth_token"])
        assert len(set(tokens)) == 4
        for token in tokens:
            health = httpx.get(
                f"{created['public_host']}/health",
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            assert health.status_code == 200, health.text
        http.delete(f"/v1/sandboxes/{sid}")


def test_tokens_of_a_deleted_sandbox_open_nothing(make_settings: SettingsFactory) -> None:
    settings = make_settings(sandbox={"pool_size": 1}, auth={"api_key": "admin-key"})
    with (
        LiveServer(settings) as server,
        httpx.Client(base_url=server.url, timeout=30, headers={"X-API-Key": "admin-key"}) as http,
    ):
        created = _create(http)
        bearer = {"Authorization": f"Bearer {created['auth_token']}"}
        assert httpx.get(f"{created['public_host']}/health", headers=bearer).status_code == 200
        http.delete(f"/v1/sandboxes/{created['id']}")
        gone = httpx.get(f"{created['public_host']}/health", headers=bearer)
        assert gone.status_code in (401, 404), gone.text


def test_create_takes_the_template_name_as_typed_with_curl(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        created = http.post("/v1/sandboxes", json={"template": "bash"}).json()
        assert created["template_name"] == "bash", created
        http.delete(f"/v1/sandboxes/{created['id']}")
        templates = http.get("/v1/templates").json()["data"]
        assert {"python", "bash"} <= {t["name"] for t in templates}
        for template in templates:
            for field in ("default_resources", "min_resources", "max_resources"):
                assert set(template[field]) == {"vcpu", "memory_mb", "disk_gb"}, template
                assert all(isinstance(v, int) for v in template[field].values()), template
            low, default, high = (
                template[f] for f in ("min_resources", "default_resources", "max_resources")
            )
            for key in ("vcpu", "memory_mb", "disk_gb"):
                assert low[key] <= default[key] <= high[key], (template["name"], key)


def test_control_plane_errors_carry_what_both_sdks_read(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        missing = http.get("/v1/sandboxes/sbx_nothing", headers={"X-Request-ID": "req-1"})
        body = missing.json()
        assert missing.status_code == 404
        # hopx-ai's _handle_error: response.json()["error"] with code, message, request_id
        assert body["error"]["code"] == "SANDBOX_NOT_FOUND"
        assert body["error"]["request_id"] == "req-1" and "sbx_nothing" in body["error"]["message"]
        assert isinstance(body["error"]["details"], dict)
        # @hopx-ai/sdk's handleError: data.code and data.message
        assert body["code"] == "SANDBOX_NOT_FOUND" and body["message"] == body["error"]["message"]


def test_a_client_that_leaves_stops_its_execution_through_the_server(
    live_server: LiveServer,
) -> None:
    # an SDK whose HTTP timeout fires closes its connection: the relay to the sandbox is
    # cancelled, agentd interrupts the cell, and the next execution is answered at once
    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        sandbox = http.post("/v1/sandboxes", json={"template_name": "python"}).json()
        execute = f"{sandbox['public_host']}/execute"
        http.post(execute, json={"code": "state = 41"})
        with pytest.raises(httpx.ReadTimeout):
            http.post(
                execute, json={"code": "import time; time.sleep(60)"}, timeout=httpx.Timeout(1.0)
            )
        started = time.monotonic()
        answer = http.post(execute, json={"code": "print(state + 1)"}).json()
        assert answer["stdout"] == "42\n", answer  # interrupted, not killed: state survives
        assert time.monotonic() - started < 5
        http.delete(f"/v1/sandboxes/{sandbox['id']}")
