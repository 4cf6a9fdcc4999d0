"""Probes, status and metrics."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from agentplex.bus.memory import MemoryBus
from agentplex.core.health import HealthService
from agentplex.db.engine import Database
from agentplex.sandbox.memory import MemoryBackend


async def test_health_satisfies_hotplex_and_par(client: httpx.AsyncClient) -> None:
    body = (await client.get("/health")).json()
    assert body["status"] == "healthy"
    assert body["checks"] == {"database": "ok", "bus": "ok", "sandboxes": "ok"}
    assert body["timestamp"].endswith("Z") and body["uptime"]
    assert body["success"] is True
    assert body["data"]["status"] == "healthy"
    assert set(body["data"]) >= {"runtime", "version", "uptime", "timestamp"}


async def test_liveness_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health/live")).json()["status"] == "alive"
    ready = await client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True


async def test_readiness_fails_with_a_reason_when_not_migrated(client: httpx.AsyncClient) -> None:
    services = client.app.app.state.services  # type: ignore[attr-defined]
    async with services.db.write() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = 'old'"))
    ready = await client.get("/health/ready")
    assert ready.status_code == 503
    assert "not migrated" in ready.json()["reason"]
    health = await client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "unhealthy"


async def test_unreachable_database_is_a_reason() -> None:
    db = Database("postgresql+psycopg://nobody@127.0.0.1:1/none")

    health = HealthService(db, MemoryBus(), MemoryBackend())
    reason = await health.database()
    await db.dispose()
    assert reason is not None and reason.startswith("database unreachable")


async def test_status_satisfies_hot_par_and_prx(client: httpx.AsyncClient) -> None:
    body = (await client.get("/status")).json()
    assert body["status"] == "ok"
    assert {"service", "version", "git_sha", "start_time"} <= set(body)
    assert body["success"] is True
    assert set(body["data"]["runtime"]) >= {
        "mode",
        "version",
        "uptime",
        "memory_usage",
        "cpu_usage",
    }
    assert "port" in body["data"]["server"]
    prx = (await client.get("/api/v1/status")).json()
    assert prx["status"] == "healthy" and prx["uptime_secs"] >= 0
    assert (await client.get("/api/v1/status/health")).json() == {"healthy": True}
    assert (await client.get("/api/status/health")).json() == {"healthy": True}  # alias


async def test_metrics_text_and_par_json(client: httpx.AsyncClient) -> None:
    await client.get("/api/v1/logs")
    await client.get("/v1/missing")
    scrape = await client.get("/metrics")
    assert scrape.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(scrape.text)}
    requests = families["agentplex_http_requests"]
    routes = {(s.labels["route"], s.labels["status"]) for s in requests.samples}
    assert ("/api/v1/logs", "200") in routes
    assert ("unmatched", "404") in routes
    assert "agentplex_http_request_duration_seconds" in families
    assert "agentplex_http_requests_in_flight" in families
    assert "process_resident_memory_bytes" in families
    par = (await client.get("/metrics", headers={"Accept": "application/json"})).json()
    assert par["success"] is True
    assert set(par["data"]["runtime"]) >= {"uptime", "memory_usage", "request_count", "error_count"}


async def test_openapi_describes_every_route(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path in (
        "/health",
        "/health/ready",
        "/status",
        "/metrics",
        "/api/v1/logs",
        "/api/v1/logs/stream",
        "/api/v1/status",
        "/logs",
        "/v1/sandboxes",
        "/v1/sandboxes/{sandbox_id}/pause",
        "/v1/templates/build",
        "/sandboxes/{sandbox_id}/{path}",
    ):
        assert path in paths, path
    assert "swagger" in (await client.get("/docs")).text.lower()
