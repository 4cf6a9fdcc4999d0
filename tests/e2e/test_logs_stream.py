"""PRX's SSE log stream over a real socket: live entries, keep-alives, and a reconnect with
``Last-Event-ID`` that loses and repeats nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ServeFactory, SseEvent, sse_events

pytestmark = pytest.mark.e2e

KEEPALIVE = 0.5


def _mark(client: httpx.Client, numbers: range) -> None:
    """Log one access line per number; each names its number in the request's path (query
    strings are never logged)."""
    for n in numbers:
        assert client.get(f"/e2e-mark/{n}").status_code == 404


def _marked(entry: dict[str, Any]) -> int | None:
    message: str = entry["message"]
    if entry["module"] == "uvicorn.access" and "/e2e-mark/" in message:
        return int(message.split("/e2e-mark/")[1].split()[0])
    return None


def _read_until_mark(events: Iterator[SseEvent], last_mark: int) -> list[dict[str, Any]]:
    """The log entries delivered up to and including the one for ``last_mark``."""
    entries: list[dict[str, Any]] = []
    for event in events:
        if event.data is None:
            continue
        assert event.event == "log"
        entry = json.loads(event.data)
        assert event.id == str(entry["id"])
        entries.append(entry)
        if _marked(entry) == last_mark:
            return entries
    pytest.fail(f"the stream ended before mark {last_mark} arrived")


def test_stream_resumes_from_last_event_id_losing_and_repeating_nothing(
    serve: ServeFactory, new_key: Callable[..., str]
) -> None:
    key = new_key()
    server = serve(
        env={
            "AGENTPLEX_LOG_ACCESS_LOG": "true",
            "AGENTPLEX_STREAMS_KEEPALIVE_SECONDS": str(KEEPALIVE),
        }
    )

    with server.client(key) as client:
        with client.stream("GET", "/api/v1/logs/stream") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            assert stream.headers["X-Request-ID"]
            events = sse_events(stream.iter_lines(), deadline=time.monotonic() + 15)
            _mark(client, range(0, 5))
            first = _read_until_mark(events, 4)

            # Idle now: the server keeps the connection alive with comment lines.
            idle_since = time.monotonic()
            comment = next(e for e in events if e.comment is not None or e.data is not None)
            assert comment.comment is not None, f"expected a keep-alive comment, got {comment}"
            assert time.monotonic() - idle_since < KEEPALIVE * 4

        # Disconnected: everything logged now must be replayed on reconnect.
        _mark(client, range(5, 15))
        last_seen = first[-1]["id"]
        with client.stream(
            "GET", "/api/v1/logs/stream", headers={"Last-Event-ID": str(last_seen)}
        ) as stream:
            assert stream.status_code == 200
            events = sse_events(stream.iter_lines(), deadline=time.monotonic() + 15)
            _mark(client, range(15, 20))
            resumed = _read_until_mark(events, 19)
    server.stop()

    assert [_marked(e) for e in first if _marked(e) is not None] == list(range(0, 5))
    assert first[0]["id"] == 1, "a new subscriber without a cursor gets the retained history"
    ids = [e["id"] for e in resumed]
    # Every entry after the cursor arrives once, in order: no gap, no repeat.
    assert ids == list(range(last_seen + 1, last_seen + 1 + len(ids)))
    assert [_marked(e) for e in resumed if _marked(e) is not None] == list(range(5, 20))
    for entry in resumed:
        assert set(entry) >= {"id", "timestamp", "level", "module", "message"}


def test_logs_stream_true_and_after_parameter(
    serve: ServeFactory, new_key: Callable[..., str]
) -> None:
    key = new_key()
    server = serve(env={"AGENTPLEX_LOG_ACCESS_LOG": "true"})

    with server.client(key) as client:
        _mark(client, range(0, 3))
        listed = client.get("/api/v1/logs", params={"module": "uvicorn.access"}).json()
        cursor = next(e["id"] for e in listed["entries"] if _marked(e) == 0)
        with client.stream(
            "GET", "/api/v1/logs", params={"stream": "true", "after": cursor}
        ) as stream:
            assert stream.status_code == 200
            events = sse_events(stream.iter_lines(), deadline=time.monotonic() + 10)
            delivered = _read_until_mark(events, 2)
        bad = client.get("/api/v1/logs/stream", headers={"Last-Event-ID": "yesterday"})
    server.stop()

    assert delivered[0]["id"] == cursor + 1
    assert [_marked(e) for e in delivered if _marked(e) is not None] == [1, 2]
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "bad_request"
