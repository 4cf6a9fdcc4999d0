"""Log queries through PRX and PAR, and the SSE log stream on a real server."""

from __future__ import annotations

import logging
import threading

import httpx

from tests.conftest import LiveServer

log = logging.getLogger("agentplex.test.api")


async def test_prx_log_query_filters(client: httpx.AsyncClient) -> None:
    log.info("visible entry", extra={"session_id": "sess_1"})
    log.debug("debug entry")
    log.error("broken entry", extra={"session_id": "sess_2"})
    body = (await client.get("/api/v1/logs", params={"module": "test.api"})).json()
    assert [e["message"] for e in body["entries"]] == ["visible entry", "broken entry"]
    assert body["total"] == 2
    entry = body["entries"][0]
    assert set(entry) >= {"timestamp", "level", "module", "message", "session_id"}
    errors = (
        await client.get("/api/v1/logs", params={"level": "error", "module": "test.api"})
    ).json()
    assert [e["message"] for e in errors["entries"]] == ["broken entry"]
    session = (await client.get("/api/v1/logs", params={"session_id": "sess_1"})).json()
    assert [e["message"] for e in session["entries"]] == ["visible entry"]
    future = (await client.get("/api/v1/logs", params={"since": "2999-01-01T00:00:00Z"})).json()
    assert future == {"entries": [], "total": 0}
    recent = (await client.get("/api/v1/logs", params={"since": "5m", "limit": 1})).json()
    assert len(recent["entries"]) == 1


async def test_par_logs_envelope(client: httpx.AsyncClient) -> None:
    log.warning("par visible")
    body = (await client.get("/logs", params={"level": "WARN", "limit": 10})).json()
    assert body["success"] is True and body["request_id"]
    assert body["data"]["level"] == "WARN"
    assert body["data"]["logs"][-1]["message"] == "par visible"
    assert body["data"]["logs"][-1]["level"] == "WARN"


def _read_events(response: httpx.Response, count: int) -> list[tuple[int, str]]:
    events: list[tuple[int, str]] = []
    event_id = None
    for line in response.iter_lines():
        if line.startswith("id:"):
            event_id = int(line[3:].strip())
        elif line.startswith("data:") and event_id is not None:
            import json

            events.append((event_id, json.loads(line[5:])["message"]))
            if len(events) == count:
                return events
    return events


def test_sse_log_stream_resumes_from_last_event_id(live_server: LiveServer) -> None:
    params = {"module": "test.api.sse"}
    sse_log = logging.getLogger("agentplex.test.api.sse")
    with httpx.Client(base_url=live_server.url, timeout=10) as http:
        sse_log.info("m0")
        with http.stream("GET", "/api/v1/logs/stream", params=params) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            threading.Timer(0.2, lambda: [sse_log.info("m%d", n) for n in (1, 2)]).start()
            first = _read_events(response, 3)
        assert [m for _, m in first] == ["m0", "m1", "m2"]
        for n in range(3, 6):  # logged while disconnected
            sse_log.info("m%d", n)
        last_id = first[-1][0]
        headers = {"Last-Event-ID": str(last_id)}
        with http.stream("GET", "/api/v1/logs/stream", params=params, headers=headers) as response:
            threading.Timer(0.2, lambda: sse_log.info("m6")).start()
            resumed = _read_events(response, 4)
        assert [m for _, m in resumed] == ["m3", "m4", "m5", "m6"]
        assert all(i > last_id for i, _ in resumed)
        with http.stream("GET", "/api/v1/logs", params={**params, "stream": "true"}) as response:
            assert [m for _, m in _read_events(response, 2)] == ["m0", "m1"]
