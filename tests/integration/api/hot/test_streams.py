"""Hot's server-sent event streams against a real server on a loopback port, on SQLite and
PostgreSQL: ``id:``/``event:``/``data:`` frames, replay then live, resume after
``Last-Event-ID`` or ``?after=``, the end after ``stream:complete`` (a run's: after its terminal
``run:update``), keep-alive comments, ``subscribe-with-event``, streams of other environments
not found; and the official ``hot-dev`` SDK listing, getting and waiting on runs, calling a
function and subscribing with an event.

The server runs in the test's own event loop, so the test plays the worker (claims runs and
writes their stream items) on the server's own services while clients follow."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn

from agentplex.app import create_app
from agentplex.core.events import Run, enqueue, new_run_row
from agentplex.core.manifest import parse_function
from agentplex.settings import Settings
from tests.conftest import SettingsFactory, free_port
from tests.integration.api.hot.test_events import (
    ADMIN,
    KEY,
    Worker,
    app_services,
    deploy,
    hot_settings,
    other_environment,
    run_service,
)

TIMEOUT = 20.0


class LoopServer:
    """The app served by uvicorn on a loopback port, in the test's event loop."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.services: Any = None
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopServer:
        self.task = asyncio.create_task(self.server.serve())
        deadline = time.monotonic() + TIMEOUT
        while not self.server.started:
            if self.task.done() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            await asyncio.sleep(0.02)
        self.services = app_services(self.app)
        run_service(self.services)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        assert self.task is not None
        await asyncio.wait_for(self.task, TIMEOUT)


@dataclass
class Live:
    server: LoopServer
    http: httpx.AsyncClient
    worker: Worker
    project: dict[str, Any]

    @property
    def services(self) -> Any:
        return self.server.services


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return hot_settings(make_settings, streams={"keepalive_seconds": 0.3})


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[Live]:
    async with (
        LoopServer(settings) as server,
        httpx.AsyncClient(base_url=server.url, headers=ADMIN, timeout=TIMEOUT) as http,
    ):
        project = await deploy(http)
        yield Live(server, http, Worker(server.services), project)


@dataclass
class Frame:
    id: str | None
    event: str | None
    data: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.data["type"])


@dataclass
class Received:
    frames: list[Frame] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    status: int = 0
    content_type: str = ""

    @property
    def types(self) -> list[str]:
        return [f.type for f in self.frames]


def parse_block(block: str, into: Received) -> None:
    fields: dict[str, str] = {}
    for line in block.split("\n"):
        if line.startswith(":"):
            into.comments.append(line)
        elif ": " in line:
            name, value = line.split(": ", 1)
            fields[name] = value
    if "data" in fields:
        into.frames.append(Frame(fields.get("id"), fields.get("event"), json.loads(fields["data"])))


async def read_sse(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    stop: Callable[[Received], bool] | None = None,
    into: Received | None = None,
    **options: Any,
) -> Received:
    """Every frame of an SSE response, until the server ends it (or ``stop`` says enough)."""
    received = into if into is not None else Received()
    async with http.stream(method, url, **options) as response:
        received.status = response.status_code
        received.content_type = response.headers.get("content-type", "")
        if response.status_code != 200:
            await response.aread()
            received.frames.append(Frame(None, None, {"type": "error", **response.json()}))
            return received
        buffer = ""
        async for chunk in response.aiter_text():
            buffer += chunk.replace("\r\n", "\n")
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                parse_block(block, received)
                if stop is not None and stop(received):
                    return received
    return received


async def follow(live: Live, method: str, url: str, **options: Any) -> asyncio.Task[Received]:
    """Read an SSE response in the background, once its first frame came."""
    received = Received()
    task = asyncio.create_task(read_sse(live.http, method, url, into=received, **options))

    async def started() -> bool:
        if task.done():
            task.result()
        return bool(received.frames)

    await until(started, f"the first frame of {url}")
    return task


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def claimed(live: Live, count: int = 1) -> list[Run]:
    """Wait for ``count`` runs to be queued and start them as a worker would."""
    runs: list[Run] = []

    async def claim() -> bool:
        runs.extend(await live.worker.start())
        return len(runs) >= count

    await until(claim, f"{count} queued runs")
    return runs


async def publish(live: Live, event_type: str, event_data: Any = None) -> dict[str, Any]:
    answer = await live.http.post(
        "/v1/events", json={"event_type": event_type, "event_data": event_data}
    )
    assert answer.status_code == 201, answer.text
    event: dict[str, Any] = answer.json()["data"]
    return event


def check_framing(received: Received) -> None:
    """Each stored item: ``id:`` increasing, ``event:`` its type; the response was SSE."""
    assert received.status == 200 and received.content_type.startswith("text/event-stream")
    ids = [int(f.id) for f in received.frames if f.id is not None]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for frame in received.frames:
        assert frame.event == frame.type


# -- /v1/streams/{stream_id}/subscribe ---------------------------------------------------------


async def test_a_stream_replays_follows_live_and_ends(live: Live) -> None:
    event = await publish(live, "user.signup", {"user_id": "1"})
    url = f"/v1/streams/{event['stream_id']}/subscribe"
    task = await follow(live, "GET", url)
    first, second = await claimed(live, 2)
    await live.worker.emit(first, "hello from the handler\n")
    await asyncio.sleep(0.1)
    assert not task.done()  # a run is still running
    await live.worker.succeed(first, {"ok": True})
    await live.worker.emit(second, "second\n")
    await live.worker.fail(second, "boom")
    received = await asyncio.wait_for(task, TIMEOUT)  # the server ended the response
    check_framing(received)
    assert received.types[0] == "event:published" and received.types[-1] == "stream:complete"
    published = received.frames[0].data
    assert published["event_id"] == event["event_id"]
    assert published["stream_id"] == event["stream_id"]
    assert published["event_type"] == "user.signup"
    assert published["event_data"] == {"user_id": "1"}
    assert all(f.id is not None for f in received.frames)
    by_run: dict[str, list[str]] = {}
    for frame in received.frames:
        run_id = frame.data.get("run", {}).get("run_id") or frame.data.get("run_id")
        if run_id:
            by_run.setdefault(run_id, []).append(frame.type)
    assert by_run[first.run_id] == [
        "run:start",
        "run:update",
        "stream:data",
        "run:stop",
        "run:update",
    ]
    assert by_run[second.run_id][-2:] == ["run:fail", "run:update"]
    stop = next(f for f in received.frames if f.type == "run:stop")
    assert stop.data["run"]["result"] == {"$ok": {"ok": True}}
    assert stop.data["run"]["status"] == "succeeded"
    data = next(f for f in received.frames if f.type == "stream:data")
    assert data.data["payload"] == {"text": "hello from the handler\n"}
    assert data.data["data_type"] == "text" and data.data["run_id"] == first.run_id

    # a reconnect resumes after its Last-Event-ID (or ?after=), and ends at once: complete
    cursor = received.frames[3].id
    resumed = await read_sse(live.http, "GET", url, headers={"Last-Event-ID": str(cursor)})
    assert [f.id for f in resumed.frames] == [f.id for f in received.frames[4:]]
    after = await read_sse(live.http, "GET", url, params={"after": cursor})
    assert [f.data for f in after.frames] == [f.data for f in received.frames[4:]]
    # POST subscribes too
    posted = await read_sse(live.http, "POST", url)
    assert [f.data for f in posted.frames] == [f.data for f in received.frames]


async def test_an_event_that_started_nothing_completes_at_once(live: Live) -> None:
    event = await publish(live, "nobody.listens", {})
    received = await asyncio.wait_for(
        read_sse(live.http, "GET", f"/v1/streams/{event['stream_id']}/subscribe"), TIMEOUT
    )
    assert received.types == ["event:published", "stream:complete"]


async def test_idle_streams_get_keep_alive_comments(live: Live) -> None:
    event = await publish(live, "user.deleted", {})
    url = f"/v1/streams/{event['stream_id']}/subscribe"
    task = await follow(live, "GET", url, stop=lambda r: len(r.comments) >= 2)
    received = await asyncio.wait_for(task, TIMEOUT)
    assert received.comments[:2] == [": keep-alive", ": keep-alive"]
    assert received.types == ["event:published"]


async def test_unknown_and_foreign_streams_are_404_before_any_event(live: Live) -> None:
    event = await publish(live, "user.signup", {})
    theirs = await other_environment(live.services)
    for stream_id, headers in (
        (str(uuid.uuid4()), ADMIN),
        ("not-a-stream", ADMIN),
        (event["stream_id"], theirs),
        (event["event_id"], ADMIN),  # an event id is not its stream's id
    ):
        for method in ("GET", "POST"):
            answer = await live.http.request(
                method, f"/v1/streams/{stream_id}/subscribe", headers=headers
            )
            assert answer.status_code == 404, answer.text
            assert answer.headers["content-type"].startswith("application/json")
            assert answer.json()["error"] == {
                "code": "not_found",
                "message": "Stream not found",
                "request_id": answer.json()["error"]["request_id"],
            }
    bad = await live.http.get(
        f"/v1/streams/{event['stream_id']}/subscribe", headers={"Last-Event-ID": "x"}
    )
    assert bad.status_code == 400 and "Last-Event-ID" in bad.json()["error"]["message"]
    huge = "9" * 26  # past any database integer: a 400, not a stream cut off mid-way
    for headers, params in (({"Last-Event-ID": huge}, {}), ({}, {"after": str(2**63)})):
        answer = await live.http.get(
            f"/v1/streams/{event['stream_id']}/subscribe", headers=headers, params=params
        )
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "bad_request"


async def test_terminal_runs_whose_items_never_came_still_end_the_stream(live: Live) -> None:
    service = run_service(live.services)
    service.check_seconds, service.settle_seconds = 0.1, 0.3
    event = await publish(live, "user.deleted", {})
    stream = await follow(live, "GET", f"/v1/streams/{event['stream_id']}/subscribe")
    [run] = await claimed(live)
    run_sub = await follow(live, "GET", f"/v1/runs/{run.run_id}/subscribe")
    await asyncio.sleep(0.2)
    await live.worker.fail(run, "lost", items=False)  # as a sweeper would, say
    received = await asyncio.wait_for(stream, TIMEOUT)
    assert received.types == [
        "event:published",
        "run:start",
        "run:update",
        "run:fail",
        "run:update",
        "stream:complete",
    ]
    assert [f.id is None for f in received.frames[-3:]] == [True, True, True]
    assert received.frames[-2].data["run"]["status"] == "failed"
    mine = await asyncio.wait_for(run_sub, TIMEOUT)
    assert mine.types[-1] == "run:update" and mine.frames[-1].data["run"]["status"] == "failed"


async def test_a_scheduled_runs_stream_is_followed_too(live: Live) -> None:
    row = new_run_row(
        live.project["env_id"],
        project_id=live.project["project_id"],
        build_id=None,
        run_type="schedule",
        function=parse_function("hello.handlers:audit"),
        input={"schedule": "0 0 * * *", "fire_time": "2026-01-01T00:00:00Z"},
    )
    async with live.services.db.write() as conn:
        assert await enqueue(conn, row)
    url = f"/v1/streams/{row['stream_id']}/subscribe"
    task = asyncio.create_task(read_sse(live.http, "GET", url))  # nothing to read yet
    await asyncio.sleep(0.2)
    [run] = await claimed(live)
    assert run.stream_id == row["stream_id"]
    await live.worker.succeed(run, None)
    received = await asyncio.wait_for(task, TIMEOUT)
    assert received.types == [
        "run:start",
        "run:update",
        "run:stop",
        "run:update",
        "stream:complete",
    ]


# -- /v1/runs/{run_id}/subscribe ---------------------------------------------------------------


async def test_a_run_subscription_shows_that_run_until_it_is_terminal(live: Live) -> None:
    await publish(live, "user.signup", {})
    runs = (await live.http.get("/v1/runs")).json()["data"]
    mine = runs[0]["run_id"]
    task = await follow(live, "GET", f"/v1/runs/{mine}/subscribe")
    started = await claimed(live, 2)
    first = next(r for r in started if r.run_id == mine)
    other = next(r for r in started if r.run_id != mine)
    await live.worker.emit(other, "not mine")
    await live.worker.emit(first, "mine")
    await live.worker.succeed(other, 1)
    await asyncio.sleep(0.1)
    assert not task.done()
    await live.worker.succeed(first, 2)
    received = await asyncio.wait_for(task, TIMEOUT)
    check_framing(received)
    snapshot = received.frames[0]
    assert snapshot.type == "run:update" and snapshot.id is None
    assert snapshot.data["run"]["run_id"] == mine and snapshot.data["run"]["status"] == "queued"
    assert received.types[1:] == [
        "run:start",
        "run:update",
        "stream:data",
        "run:stop",
        "run:update",
    ]
    assert received.frames[3].data["payload"] == {"text": "mine"}
    assert received.frames[-1].data["run"]["status"] == "succeeded"
    assert received.frames[-1].data["run"]["result"] == {"$ok": 2}
    # every snapshot names its project, as GET /v1/runs/{id} does
    named = {f.data["run"]["project_name"] for f in received.frames if "run" in f.data}
    assert named == {runs[0]["project_name"]} and None not in named
    # a finished run: its snapshot, and the end
    again = await read_sse(live.http, "GET", f"/v1/runs/{mine}/subscribe")
    assert again.types == ["run:update"]
    assert again.frames[0].data["run"]["status"] == "succeeded"
    # a client cut off after run:start resumes after it: it gets what it missed, nothing lost
    cursor = received.frames[1].id
    resumed = await read_sse(
        live.http, "GET", f"/v1/runs/{mine}/subscribe", headers={"Last-Event-ID": str(cursor)}
    )
    assert resumed.types == ["run:update", "stream:data", "run:stop", "run:update"]
    assert [f.id for f in resumed.frames] == [f.id for f in received.frames[2:]]


# -- /v1/streams/subscribe-with-event ----------------------------------------------------------


async def test_subscribe_with_event_publishes_and_follows(live: Live) -> None:
    body = {"event_type": "hot:call", "event_data": {"fn": "::hello::math/add", "args": [2, 3]}}
    task = await follow(live, "POST", "/v1/streams/subscribe-with-event", json=body)
    [run] = await claimed(live)
    assert run.run_type == "call" and run.input == {"fn": "::hello::math/add", "args": [2, 3]}
    await live.worker.succeed(run, 5)
    received = await asyncio.wait_for(task, TIMEOUT)
    check_framing(received)
    assert received.types == [
        "event:published",
        "run:start",
        "run:update",
        "run:stop",
        "run:update",
        "stream:complete",
    ]
    published = received.frames[0].data
    assert published["stream_id"] == run.stream_id and published["event_id"] == run.event_id
    assert received.frames[3].data["run"]["result"] == {"$ok": 5}

    bad = await live.http.post(
        "/v1/streams/subscribe-with-event",
        json={"event_type": "hot:call", "event_data": {"fn": "::hello::math/nope"}},
    )
    assert bad.status_code == 400 and bad.headers["content-type"].startswith("application/json")
    assert "::hello::math/nope" in bad.json()["error"]["message"]
    empty = await live.http.post("/v1/streams/subscribe-with-event", json={})
    assert empty.status_code == 400 and "event_type" in empty.json()["error"]["message"]


# -- the official SDK --------------------------------------------------------------------------


async def test_the_hot_sdk_reads_waits_calls_and_subscribes(live: Live) -> None:
    import hot as sdk

    client = sdk.HotClient(token=KEY, base_url=live.server.url, timeout=TIMEOUT)

    event = await asyncio.to_thread(
        client.events.publish, {"event_type": "user.signup", "event_data": {"user_id": "7"}}
    )
    assert event["event_type"] == "user.signup" and event["event_data"] == {"user_id": "7"}
    assert (await asyncio.to_thread(client.events.get, event["event_id"])) == event
    events = await asyncio.to_thread(client.events.list, limit=5)
    assert events["data"] == [event] and events["pagination"]["limit"] == 5
    event_runs = await asyncio.to_thread(client.events.get_runs, event["event_id"])
    assert len(event_runs["data"]) == 2
    queued = await asyncio.to_thread(client.runs.list, status="queued", type="event")
    assert {r["run_id"] for r in queued["data"]} == {r["run_id"] for r in event_runs["data"]}
    run_id = queued["data"][0]["run_id"]
    assert (await asyncio.to_thread(client.runs.get, run_id))["status"] == "queued"

    # runs.wait follows the run until a terminal run:update
    waiting = asyncio.create_task(asyncio.to_thread(client.runs.wait, run_id, timeout=TIMEOUT))
    started = await claimed(live, 2)
    await asyncio.sleep(0.2)
    assert not waiting.done()
    mine = next(r for r in started if r.run_id == run_id)
    other = next(r for r in started if r.run_id != run_id)
    await live.worker.succeed(mine, {"greeting": "hello 7"})
    waited = await asyncio.wait_for(waiting, TIMEOUT)
    assert waited["status"] == "succeeded" and waited["result"] == {"$ok": {"greeting": "hello 7"}}
    # ... and raises for a run that failed
    failing = asyncio.create_task(
        asyncio.to_thread(client.runs.wait, other.run_id, timeout=TIMEOUT)
    )
    await asyncio.sleep(0.2)
    await live.worker.fail(other, "the handler broke")
    with pytest.raises(sdk.HotRunError) as broke:
        await asyncio.wait_for(failing, TIMEOUT)
    assert broke.value.run["status"] == "failed"

    stats = await asyncio.to_thread(client.runs.stats)
    assert stats["total_runs"] == 2 and stats["succeeded"] == 1 and stats["failed"] == 1

    # call_hot: publish hot:call through subscribe-with-event, the result unwrapped
    calling = asyncio.create_task(
        asyncio.to_thread(client.events.call_hot, "::hello::math/add", [2, 3], timeout=TIMEOUT)
    )
    [call] = await claimed(live)
    await live.worker.emit(call, "adding\n")
    await live.worker.succeed(call, 5)
    assert await asyncio.wait_for(calling, TIMEOUT) == 5

    def subscribe() -> list[dict[str, Any]]:
        body = {"event_type": "user.deleted", "event_data": {"user_id": "7"}}
        return list(client.streams.subscribe_with_event(body))

    subscribing = asyncio.create_task(asyncio.to_thread(subscribe))
    [deleted] = await claimed(live)
    await live.worker.succeed(deleted, None)
    frames = await asyncio.wait_for(subscribing, TIMEOUT)
    assert [f["type"] for f in frames] == ["event:published", "run:start", "run:update", "run:stop"]

    with pytest.raises(sdk.HotApiError) as missing:
        await asyncio.to_thread(client.runs.get, str(uuid.uuid4()))
    assert missing.value.status_code == 404 and missing.value.message == "Run not found"
    with pytest.raises(sdk.HotApiError) as bad:
        await asyncio.to_thread(client.runs.list, time_range="a week")
    assert bad.value.status_code == 400 and "P7D" in bad.value.message
    client.close()
