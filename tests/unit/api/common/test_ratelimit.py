from __future__ import annotations

import pytest
from pydantic import ValidationError

from agentplex.api.common import ratelimit
from agentplex.api.common.ratelimit import RateLimiter, bucket_for, group_for
from agentplex.settings import RATE_LIMIT_GROUPS, RateLimitSettings


@pytest.mark.parametrize(
    ("method", "path", "group"),
    [
        # PRX: the groups of its reference
        ("POST", "/api/v1/sessions", "sessions_write"),
        ("DELETE", "/api/v1/sessions/s1", "sessions_write"),
        ("GET", "/api/v1/sessions", "sessions_read"),
        ("GET", "/api/sessions/s1", "sessions_read"),  # the /api alias
        ("PATCH", "/api/v1/config", "config_write"),
        ("GET", "/api/v1/config", "default"),
        ("GET", "/api/v1/logs", "default"),
        # Hopx: control plane, and the data plane under /sandboxes/{id} or at the root
        ("POST", "/v1/sandboxes", "hopx_control"),
        ("GET", "/v1/sandboxes/sbx_1", "hopx_control"),
        ("POST", "/v1/sandboxes/sbx_1/token/refresh", "hopx_control"),
        ("GET", "/v1/templates", "hopx_control"),
        ("POST", "/sandboxes/sbx_1/execute", "hopx_data"),
        ("GET", "/sandboxes/sbx_1/files/read", "hopx_data"),
        ("GET", "/sandboxes/sbx_1/session/x", "hopx_data"),  # not a PRX/OpenCode session
        ("GET", "/metrics/snapshot", "hopx_data"),
        # Hot, OpenCode/HotPlex, PAR
        ("GET", "/v1/projects", "hot"),
        ("POST", "/v1/events", "hot"),
        ("POST", "/session", "opencode"),
        ("GET", "/session/s1/message", "opencode"),
        ("PATCH", "/config", "opencode"),
        ("GET", "/global/event", "opencode"),
        ("POST", "/agents/a1/invoke", "par"),
        ("GET", "/logs", "par"),
        # the rest
        ("GET", "/metrics", "default"),
    ],
)
def test_endpoint_groups(method: str, path: str, group: str) -> None:
    assert group_for(method, path) == group


def test_every_group_has_a_setting_with_a_sane_default() -> None:
    settings = RateLimitSettings()
    limiter = RateLimiter(settings)
    for group in RATE_LIMIT_GROUPS:
        assert getattr(settings, group), group
    # PRX's documented numbers
    assert (settings.sessions_write, settings.sessions_read) == ("10/second", "50/second")
    assert (settings.config_write, settings.default) == ("5/second", "30/second")
    assert settings.par == "1000/minute"
    # a script driving a sandbox back to back (a few hundred calls a second) stays inside
    assert settings.hopx_data == "1000/second" and settings.hopx_control == "500/second"
    assert limiter.enabled


def test_every_group_is_configurable_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for n, group in enumerate(RATE_LIMIT_GROUPS, start=2):
        monkeypatch.setenv(f"AGENTPLEX_RATE_LIMIT_{group.upper()}", f"{n}/minute")
    settings = RateLimitSettings()
    for n, group in enumerate(RATE_LIMIT_GROUPS, start=2):
        assert getattr(settings, group) == f"{n}/minute"


def test_a_malformed_limit_is_refused_with_the_reason() -> None:
    with pytest.raises(ValidationError, match=r"hopx_data(.|\n)*'often'.*like '10/second'"):
        RateLimitSettings(hopx_data="often")


def test_the_data_plane_counts_per_sandbox() -> None:
    a = bucket_for("key:k1", "POST", "/sandboxes/sbx_a/execute")
    b = bucket_for("key:k1", "GET", "/sandboxes/sbx_b/env")
    assert a[1] == b[1] == "hopx_data" and a[0] != b[0]
    assert bucket_for("key:k1", "GET", "/sandboxes/sbx_a/env") == a
    # elsewhere the caller is the whole subject
    assert bucket_for("key:k1", "GET", "/v1/sandboxes/sbx_a") == ("key:k1", "hopx_control")


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


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


async def test_the_window_opens_at_the_first_hit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst straddling a wall-clock second boundary gets the limit once, not twice."""
    clock = _Clock(1_700_000_000.9)
    monkeypatch.setattr(ratelimit, "time", clock)
    limiter = RateLimiter(RateLimitSettings(default="3/second"))
    for _ in range(3):
        assert (await limiter.hit("k", "default")).allowed
    clock.now = 1_700_000_001.05  # a new wall-clock second, but 0.15 s after the first hit
    refused = await limiter.hit("k", "default")
    assert not refused.allowed
    assert refused.reset_time == pytest.approx(1_700_000_001.9)
    assert refused.retry_after == 1
    clock.now = 1_700_000_001.95  # a second after the first hit: a fresh window
    fresh = await limiter.hit("k", "default")
    assert fresh.allowed and fresh.remaining == 2
    assert fresh.reset_time == pytest.approx(1_700_000_002.95)
