"""Rate limits as a client meets them: headers on every answer, then a real 429."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.e2e.conftest import ServeFactory

pytestmark = pytest.mark.e2e

LIMIT = 5


def test_headers_then_429_with_retry_after_and_a_budget_per_key(
    serve: ServeFactory, new_key: Callable[..., str]
) -> None:
    first, second = new_key("first"), new_key("second")
    server = serve(env={"AGENTPLEX_RATE_LIMIT_DEFAULT": f"{LIMIT}/second"})

    with server.client(first) as client:
        # The window opens at the first hit and lasts a second; this burst takes milliseconds.
        responses = [client.get("/api/v1/logs") for _ in range(LIMIT + 1)]
        other = client.get("/api/v1/logs", headers={"Authorization": f"Bearer {second}"})
        refused = responses[-1]
        for response in responses[:LIMIT]:
            assert response.status_code == 200, response.text
        remaining = [int(r.headers["X-RateLimit-Remaining"]) for r in responses[:LIMIT]]
        assert remaining == list(range(LIMIT - 1, -1, -1))
        for response in responses:
            assert response.headers["X-RateLimit-Limit"] == str(LIMIT)
            assert int(response.headers["X-RateLimit-Reset"]) >= int(time.time()) - 1

        assert refused.status_code == 429
        assert 1 <= int(refused.headers["Retry-After"]) <= 2
        assert refused.headers["X-RateLimit-Remaining"] == "0"
        error = refused.json()["error"]
        assert error["code"] == "rate_limited"
        assert "retry" in error["message"].lower()
        assert "details" in error

        # The second key was not charged for the first key's burst.
        assert other.status_code == 200
        assert other.headers["X-RateLimit-Remaining"] == str(LIMIT - 1)

        # Once the window has passed, the first key is served again.
        time.sleep(int(refused.headers["Retry-After"]))
        again = client.get("/api/v1/logs")
        assert again.status_code == 200, again.text

        # Other groups and surfaces carry the headers too; probes are not limited.
        assert "X-RateLimit-Limit" in client.get("/metrics").headers
        assert "X-RateLimit-Limit" in client.get("/logs").headers
        assert client.get("/health/live").status_code == 200
    server.stop()
