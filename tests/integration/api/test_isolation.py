"""Without working bubblewrap the server still starts, says so, and refuses sandboxes unless
unisolated mode is explicitly allowed."""

from __future__ import annotations

import logging

import httpx
import pytest

from agentplex.sandbox import isolation, manager
from tests.conftest import LiveServer, SettingsFactory

NONE = isolation.IsolationInfo("none", "bwrap: not installed")


@pytest.fixture(autouse=True)
def _no_bubblewrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager, "detect_isolation", lambda *_a, **_k: NONE)


def test_refused_and_reported_loudly(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with LiveServer(make_settings()) as server, httpx.Client(base_url=server.url) as http:
        status = http.get("/status").json()["sandbox"]
        assert status["isolation"] == "none" and status["unisolated_allowed"] is False
        refused = http.post("/v1/sandboxes", json={"template_name": "bash"})
        assert refused.status_code == 503
        assert refused.json()["code"] == "SANDBOX_UNAVAILABLE"
        assert "isolation" in refused.json()["message"].lower()
        assert http.get("/health").json()["status"] == "healthy"  # the server itself is fine
    assert any("SANDBOX ISOLATION UNAVAILABLE" in r.getMessage() for r in caplog.records)


def test_allowed_explicitly_and_marked_on_the_record(make_settings: SettingsFactory) -> None:
    settings = make_settings(sandbox={"allow_unisolated": True, "pool_size": 0})
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        created = http.post("/v1/sandboxes", json={"template_name": "bash"})
        assert created.status_code == 200, created.text
        sandbox = created.json()
        assert sandbox["isolation"] == "none"
        ran = http.post(f"{sandbox['public_host']}/commands/run", json={"command": "echo unsafe"})
        assert ran.json()["stdout"].strip() == "unsafe"
        http.delete(f"/v1/sandboxes/{sandbox['id']}")
