from __future__ import annotations

import pytest

from agentplex.api.common.ratelimit import RateLimiter, group_for
from agentplex.settings import RateLimitSettings


@pytest.mark.parametrize(
    ("method", "path", "group"),
    [
        ("POST", "/api/v1/sessions", "sessions_write"),
        ("DELETE", "/api/v1/sessions/s1", "sessions_write"),
        ("GET", "/api/v1/sessions", "sessions_read"),
        ("POST", "/session", "sessions_write"),
        ("GET", "/session/s1/message", "sessions_read"),
        ("PATCH", "/api/v1/config", "config_write"),
        ("GET", "/api/v1/config", "default"),
        ("GET", "/v1/projects", "default"),
    ],
)
def test_endpoint_groups(method: str, path: str, group: str) -> None:
    assert group_for(method, path) == group


async def test_limits_per_subject_and_group() -> None:
    limiter = RateLimiter(RateLimitSettings(default="3/minute", sessions_read="1/minute"))
    decisions = [await limiter.hit("key-a", "default") for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[-1].limit == 3
    assert 1 <= decisions[-1].retry_after <= 60
    # another caller and another group have budgets of their own
    assert (await limiter.hit("key-b", "default")).allowed
    assert (await limiter.hit("key-a", "sessions_read")).allowed
    assert not (await limiter.hit("key-a", "sessions_read")).allowed
