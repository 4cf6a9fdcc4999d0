"""Two `agentplex serve` replicas configured for scale-out: one database, Redis for the bus and
the rate-limit counters, as the README's Scale-out section sets them up."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REDIS_URL
from tests.e2e.conftest import ServeFactory, ServeProcess

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

LIMIT = 6


def test_two_replicas_share_one_budget_through_redis(
    serve: ServeFactory, new_key: Callable[..., str]
) -> None:
    key = new_key()  # a fresh key id, so counters of other runs in Redis are never touched
    env = {
        "AGENTPLEX_BUS_URL": REDIS_URL,
        "AGENTPLEX_RATE_LIMIT_STORAGE_URL": REDIS_URL,
        "AGENTPLEX_RATE_LIMIT_DEFAULT": f"{LIMIT}/minute",
    }
    first, second = serve(env=env), serve(env=env)
    with first.client(key) as a, second.client(key) as b:
        for server in (a, b):
            health = server.get("/health").json()
            assert health["checks"]["bus"] == "ok", health
        answers = [(a if n % 2 else b).get("/api/v1/logs") for n in range(LIMIT)]
        assert [r.status_code for r in answers] == [200] * LIMIT
        # the budget is one, whichever replica counts the hit
        remaining = sorted(int(r.headers["X-RateLimit-Remaining"]) for r in answers)
        assert remaining == list(range(LIMIT))
        for client in (a, b):
            refused = client.get("/api/v1/logs")
            assert refused.status_code == 429, refused.text
            assert int(refused.headers["Retry-After"]) >= 1
    first.stop()
    second.stop()


def test_a_replica_whose_redis_is_unreachable_refuses_to_start(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    # fail fast, naming what is missing, rather than serve without its shared bus
    unreachable = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    server = ServeProcess(tmp_path, {**base_env, "AGENTPLEX_BUS_URL": unreachable})
    with pytest.raises(pytest.fail.Exception, match="exited"):
        server.start(timeout=20)
    assert server.proc is not None and server.proc.wait(10) != 0
    assert "127.0.0.1:1" in server.stderr
