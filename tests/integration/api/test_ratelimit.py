"""Rate-limit headers on every API response and a real 429."""

from __future__ import annotations

from tests.conftest import SettingsFactory, open_client
from tests.integration.api.test_auth import _create_key


async def test_headers_and_a_real_429(make_settings: SettingsFactory) -> None:
    settings = make_settings(
        rate_limit={"default": "3/minute", "sessions_write": "1/minute", "hot": "1/minute"}
        | {"par": "1/minute", "hopx_control": "1/minute"}
    )
    async for client in open_client(settings):
        key_a, key_b = await _create_key(client), await _create_key(client)
        a, b = {"X-API-Key": key_a}, {"X-API-Key": key_b}
        seen = [await client.get("/api/v1/logs", headers=a) for _ in range(3)]
        assert [r.status_code for r in seen] == [200, 200, 200]
        assert [r.headers["x-ratelimit-remaining"] for r in seen] == ["2", "1", "0"]
        assert {r.headers["x-ratelimit-limit"] for r in seen} == {"3"}
        assert all(int(r.headers["x-ratelimit-reset"]) > 1_700_000_000 for r in seen)

        limited = await client.get("/api/v1/logs", headers=a)
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert limited.json()["error"]["code"] == "rate_limited"

        # each surface has a budget of its own, and refuses in its own envelope
        assert (await client.get("/v1/projects", headers=a)).status_code != 429
        hot = await client.get("/v1/projects", headers=a)
        assert hot.status_code == 429
        assert hot.json()["error"]["code"] == "rate_limit_exceeded"
        assert hot.json()["error"]["retry_after"] >= 1
        assert (await client.get("/logs", headers=a)).status_code == 200
        par = await client.get("/logs", headers=a)
        assert par.json()["error"]["code"] == "RATE_LIMITED"
        assert (await client.get("/v1/templates", headers=a)).status_code == 200
        hopx = await client.get("/v1/templates", headers=a)
        assert hopx.status_code == 429 and int(hopx.headers["retry-after"]) >= 1

        # another key has a budget of its own, and so has another endpoint group
        assert (await client.get("/api/v1/logs", headers=b)).status_code == 200
        first = await client.post("/api/v1/sessions", headers=a)
        assert first.headers["x-ratelimit-limit"] == "1"
        assert (await client.post("/api/v1/sessions", headers=a)).status_code == 429

        # probes are never limited
        for _ in range(5):
            assert (await client.get("/health/live")).status_code == 200


async def test_limits_can_be_turned_off(make_settings: SettingsFactory) -> None:
    settings = make_settings(rate_limit={"enabled": False, "default": "1/minute"})
    async for client in open_client(settings):
        for _ in range(3):
            response = await client.get("/api/v1/logs")
            assert response.status_code == 200
            assert "x-ratelimit-limit" not in response.headers
