"""`/metrics` as Prometheus scrapes it, and as a PAR client reads it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import ServeFactory

pytestmark = pytest.mark.e2e


def test_prometheus_text_by_route_template_and_par_json(
    serve: ServeFactory, new_key: Callable[..., str]
) -> None:
    key = new_key()
    server = serve()

    with server.client(key) as client:
        for _ in range(3):
            assert (
                client.get("/api/v1/logs", params={"limit": 2, "level": "info"}).status_code == 200
            )
        assert client.get("/logs").status_code == 200
        assert client.get("/health/live").status_code == 200
        assert client.get("/api/v1/logs", params={"since": "yesterday"}).status_code == 400
        text = client.get("/metrics")
        as_json = client.get("/metrics", headers={"Accept": "application/json"})
    server.stop()

    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(text.text)}

    requests = {
        (s.labels["method"], s.labels["route"], s.labels["status"]): s.value
        for s in families["agentplex_http_requests"].samples
        if s.name == "agentplex_http_requests_total"
    }
    # Labelled by route template: the query string never makes a new series.
    assert requests[("GET", "/api/v1/logs", "200")] == 3
    assert requests[("GET", "/api/v1/logs", "400")] == 1
    assert requests[("GET", "/logs", "200")] == 1
    # ServeProcess.start polls /health/live until it answers, then the test asked once more.
    assert requests[("GET", "/health/live", "200")] >= 2
    assert all("?" not in route for _, route, _ in requests)

    latency = families["agentplex_http_request_duration_seconds"]
    assert latency.type == "histogram"
    counts = {s.labels["route"]: s.value for s in latency.samples if s.name.endswith("_count")}
    assert counts["/api/v1/logs"] == 4
    assert any(s.name.endswith("_bucket") and s.labels["le"] == "+Inf" for s in latency.samples)

    assert families["agentplex_http_requests_in_flight"].type == "gauge"
    assert families["process_resident_memory_bytes"].samples[0].value > 0
    assert "process_cpu_seconds" in families
    assert "agentplex_log_entries" in families

    assert as_json.status_code == 200
    body = as_json.json()
    assert body["success"] is True
    runtime = body["data"]["runtime"]
    assert set(runtime) >= {"uptime", "memory_usage", "cpu_usage", "request_count", "error_count"}
    assert runtime["request_count"] >= 7
    assert runtime["error_count"] == 0
    assert runtime["memory_usage"].endswith("MB")
    assert body["data"]["agents"] == []
