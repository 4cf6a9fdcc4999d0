"""API keys against a running server: refusals in each surface's envelope, both ways of
sending a key, public probes, request ids, and the key lifecycle through the CLI."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Cli, ServeFactory

pytestmark = pytest.mark.e2e

HINT = "Authorization: Bearer"


def _assert_hot(body: dict[str, Any], request_id: str) -> None:
    assert set(body) == {"error"}
    assert body["error"]["code"] == "unauthorized"
    assert HINT in body["error"]["message"]
    assert body["error"]["request_id"] == request_id


def _assert_prx(body: dict[str, Any], request_id: str) -> None:
    assert set(body) == {"error"}
    assert body["error"]["code"] == "unauthorized"
    assert HINT in body["error"]["message"]
    assert "details" in body["error"]


def _assert_par(body: dict[str, Any], request_id: str) -> None:
    assert body["success"] is False
    assert body["error"]["code"] == "UNAUTHORIZED"
    assert HINT in body["error"]["message"]
    assert body["timestamp"]
    assert body["request_id"] == request_id


def _assert_hopx(body: dict[str, Any], request_id: str) -> None:
    # the control plane: hopx-ai reads error.*, @hopx-ai/sdk the top-level code and message
    assert body["error"]["code"] == body["code"] == "UNAUTHORIZED"
    assert HINT in body["error"]["message"] and HINT in body["message"]
    assert body["error"]["request_id"] == request_id


def _assert_hopx_data(body: dict[str, Any], request_id: str) -> None:
    assert isinstance(body["error"], str)  # the agents' shape, which both SDKs' agent clients read
    assert HINT in body["error"]
    assert body["code"] == "UNAUTHORIZED"
    assert body["request_id"] == request_id


def _assert_opencode(body: dict[str, Any], request_id: str) -> None:
    assert body["name"] == "UnauthorizedError"
    assert HINT in body["data"]["message"]


SURFACES = {
    "hot": ("/v1/projects", _assert_hot),
    "prx": ("/api/v1/logs", _assert_prx),
    "par": ("/agents", _assert_par),
    "hopx": ("/v1/sandboxes", _assert_hopx),
    "hopx_data": ("/sandboxes/sbx_x/execute", _assert_hopx_data),
    "opencode": ("/session", _assert_opencode),
}
PUBLIC = ["/health", "/health/live", "/health/ready", "/status"]


def test_keys_are_enforced_in_every_surface_envelope(
    serve: ServeFactory, new_key: Callable[..., str]
) -> None:
    key = new_key()
    server = serve()

    with server.client() as client:
        for surface, (path, check) in SURFACES.items():
            for headers in ({}, {"Authorization": "Bearer apx_not-a-real-key"}, {"X-API-Key": "x"}):
                request_id = f"e2e-{surface}-{len(headers)}"
                response = client.get(path, headers={**headers, "X-Request-ID": request_id})
                assert response.status_code == 401, (surface, headers, response.text)
                assert response.headers["X-Request-ID"] == request_id
                assert response.headers["content-type"].startswith("application/json")
                check(response.json(), request_id)

        for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
            response = client.get("/api/v1/logs", headers={**headers, "X-Request-ID": "trace.42"})
            assert response.status_code == 200, response.text
            assert "entries" in response.json()
            assert response.headers["X-Request-ID"] == "trace.42"
            # Past auth, the other surfaces answer for themselves: a route serves, an unknown
            # one is a 404 in its surface's envelope (never a 401, never a 500)
            assert client.get("/v1/sandboxes", headers=headers).status_code == 200
            missing = client.get("/v1/no-such-thing", headers=headers)
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"

        for path in PUBLIC:
            response = client.get(path)
            assert response.status_code == 200, (path, response.text)
            assert re.fullmatch(r"[0-9a-f]{16}-[0-9a-f]+", response.headers["X-Request-ID"])
        assert client.get("/health").json()["status"] == "healthy"
    server.stop()


def test_keys_list_usage_and_revoked_keys_stop_working(
    serve: ServeFactory, new_key: Callable[..., str], cli: Cli, data_dir: Path
) -> None:
    kept, revoked = new_key("kept"), new_key("revoked")
    listed = cli("auth", "keys", "--data-dir", str(data_dir)).stdout
    assert kept[:12] in listed and revoked[:12] in listed
    assert listed.count("never") == 2
    cache_seconds = 1.0
    server = serve(env={"AGENTPLEX_AUTH_CACHE_SECONDS": str(cache_seconds)})

    with server.client() as client:
        for key in (kept, revoked):
            assert client.get("/api/v1/logs", headers={"X-API-Key": key}).status_code == 200

        cli("auth", "revoke", revoked[:12], "--data-dir", str(data_dir))
        revoked_at = time.monotonic()
        while client.get("/api/v1/logs", headers={"X-API-Key": revoked}).status_code != 401:
            assert time.monotonic() - revoked_at < cache_seconds + 1.0, "revoked key still works"
            time.sleep(0.1)
        assert client.get("/api/v1/logs", headers={"X-API-Key": kept}).status_code == 200
    # Usage is written every 30 s and on shutdown.
    server.stop()

    listed = cli("auth", "keys", "--data-dir", str(data_dir)).stdout
    kept_line = next(line for line in listed.splitlines() if line.startswith(kept[:12]))
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d.*\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", kept_line)
    assert "never" not in kept_line
    assert kept_line.rstrip().endswith("active")
    assert revoked[:12] not in listed
    everything = cli("auth", "keys", "--all", "--data-dir", str(data_dir)).stdout
    revoked_line = next(line for line in everything.splitlines() if line.startswith(revoked[:12]))
    assert revoked_line.rstrip().endswith("revoked")


def test_an_unknown_key_prefix_cannot_be_revoked(cli: Cli, data_dir: Path) -> None:
    result = cli("auth", "revoke", "apx_nosuchkey", "--data-dir", str(data_dir), check=False)

    assert result.returncode != 0
    assert "apx_nosuchkey" in result.stderr
