"""Hot's runs through the HTTP app on SQLite and PostgreSQL: the list with its ``status``,
``type``, ``time_range`` and ``project`` filters (bad values answered with what is allowed), one
run, its captured vars, stats, cancel (a queued run at once, its stream told), the live quota,
and another environment's runs not found."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from agentplex.core.clock import new_id, utcnow
from agentplex.db.records import run_vars
from agentplex.db.tables import runs as runs_table
from agentplex.settings import Settings
from tests.conftest import SettingsFactory, open_client
from tests.integration.api.hot.test_events import (
    ADMIN,
    ISO_Z,
    Worker,
    deploy,
    hot_error,
    hot_settings,
    other_environment,
    publish,
    run_service,
    services_of,
)

RUN_FIELDS = {
    "run_id",
    "env_id",
    "project_id",
    "project_name",
    "build_id",
    "stream_id",
    "event_id",
    "origin_run_id",
    "run_type",
    "ns",
    "var",
    "function",
    "status",
    "result",
    "error",
    "attempt",
    "retry_attempt",
    "max_attempts",
    "next_retry_at",
    "timeout_seconds",
    "created_at",
    "start_time",
    "stop_time",
}


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return hot_settings(make_settings)


@pytest.fixture
async def hot(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for client in open_client(settings):
        client.headers.update(ADMIN)
        run_service(services_of(client))
        await deploy(client)
        yield client


async def listed(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    answer = await client.get("/v1/runs", params=params)
    assert answer.status_code == 200, answer.text
    data: list[dict[str, Any]] = answer.json()["data"]
    return data


async def test_runs_as_the_page_shows_them(hot: httpx.AsyncClient) -> None:
    worker = Worker(services_of(hot))
    event = await publish(hot, "user.signup", {"user_id": "123"})
    first, second = await worker.start()
    done = await worker.succeed(first, {"greeting": "hi"})
    answer = await hot.get(f"/v1/runs/{done.run_id}")
    assert answer.status_code == 200
    run = answer.json()["data"]
    assert set(run) == RUN_FIELDS
    assert run["status"] == "succeeded" and run["result"] == {"$ok": {"greeting": "hi"}}
    assert run["event_id"] == event["event_id"] and run["stream_id"] == event["stream_id"]
    assert run["project_name"] == "hello" and run["run_type"] == "event"
    assert run["attempt"] == 1 and run["origin_run_id"] is None
    assert ISO_Z.match(run["start_time"]) and ISO_Z.match(run["stop_time"])
    assert run["start_time"] <= run["stop_time"]
    assert (await hot.get(f"/v1/runs/{done.run_id.upper()}")).json()["data"] == run

    body = (await hot.get("/v1/runs")).json()
    assert body["pagination"] == {"total": 2, "limit": 20, "offset": 0, "has_more": False}
    assert {r["run_id"] for r in body["data"]} == {first.run_id, second.run_id}
    assert {r["status"] for r in body["data"]} == {"succeeded", "running"}
    assert body["data"][0]["created_at"] >= body["data"][1]["created_at"]


async def test_filters(hot: httpx.AsyncClient) -> None:
    worker = Worker(services_of(hot))
    await publish(hot, "user.signup", {})
    await publish(hot, "hot:call", {"fn": "::hello::math/add", "args": [1, 2]})
    started = await worker.start(limit=2)
    await worker.fail(started[0], "boom")
    await publish(hot, "user.deleted", {})  # queued

    assert len(await listed(hot)) == 4
    assert [r["status"] for r in await listed(hot, status="failed")] == ["failed"]
    assert [r["status"] for r in await listed(hot, status="running")] == ["running"]
    assert len(await listed(hot, status="queued")) == 2
    assert len(await listed(hot, status="queued,running")) == 3
    calls = await listed(hot, type="call")
    assert [r["var"] for r in calls] == ["add"]
    assert len(await listed(hot, type="event")) == 3
    assert await listed(hot, type="schedule") == []
    assert calls[0]["status"] == "queued"
    assert len(await listed(hot, type="event", status="queued")) == 1
    assert len(await listed(hot, project="hello")) == 4
    project_id = calls[0]["project_id"]
    assert len(await listed(hot, project=project_id)) == 4
    page = (await hot.get("/v1/runs", params={"limit": 3, "offset": 3})).json()
    assert len(page["data"]) == 1 and page["pagination"]["has_more"] is False


async def test_time_range_is_an_iso_8601_duration(hot: httpx.AsyncClient) -> None:
    await publish(hot, "user.signup", {})
    old, recent = await listed(hot)
    services = services_of(hot)
    async with services.db.write() as conn:
        await conn.execute(
            sa.update(runs_table)
            .where(runs_table.c.run_id == old["run_id"])
            .values(created_at=utcnow() - timedelta(days=10))
        )
    assert len(await listed(hot, time_range="P30D")) == 2
    assert [r["run_id"] for r in await listed(hot, time_range="P7D")] == [recent["run_id"]]
    assert [r["run_id"] for r in await listed(hot, time_range="PT1H")] == [recent["run_id"]]
    assert len(await listed(hot, time_range="P1DT12H")) == 1
    for all_time in ("P3000Y", "P1000000D"):  # longer than the calendar: every run
        assert len(await listed(hot, time_range=all_time)) == 2
    for bad in ("7d", "P7X", "3600", "1 day", "last week", "P"):
        answer = await hot.get("/v1/runs", params={"time_range": bad})
        message = hot_error(answer, 400, "bad_request")
        assert "time_range must be an ISO 8601 duration such as P7D" in message, message
    for empty in ("PT0S", "-P1D"):
        answer = await hot.get("/v1/runs", params={"time_range": empty})
        assert "ISO 8601" in hot_error(answer, 400, "bad_request")


async def test_unknown_filter_values_list_the_allowed_ones(hot: httpx.AsyncClient) -> None:
    message = hot_error(await hot.get("/v1/runs?status=done"), 400, "bad_request")
    assert "'done'" in message and "queued, running, succeeded, failed, cancelled" in message
    message = hot_error(await hot.get("/v1/runs?type=job"), 400, "bad_request")
    assert "'job'" in message and "call, event, schedule, run, eval, repl" in message
    message = hot_error(await hot.get("/v1/runs?project=missing"), 404, "not_found")
    assert message == "Project not found"
    assert "limit" in hot_error(await hot.get("/v1/runs?limit=x"), 400, "bad_request")


async def test_unknown_runs_are_404(hot: httpx.AsyncClient) -> None:
    for ref in (str(uuid.uuid4()), "nope"):
        for method, path in (
            ("GET", f"/v1/runs/{ref}"),
            ("GET", f"/v1/runs/{ref}/vars"),
            ("POST", f"/v1/runs/{ref}/cancel"),
            ("GET", f"/v1/runs/{ref}/subscribe"),
        ):
            answer = await hot.request(method, path)
            assert hot_error(answer, 404, "not_found") == "Run not found", (method, path)


async def test_another_environment_sees_no_run(hot: httpx.AsyncClient) -> None:
    await publish(hot, "user.signup", {})
    run = (await listed(hot))[0]
    theirs = await other_environment(services_of(hot))
    for method, path in (
        ("GET", f"/v1/runs/{run['run_id']}"),
        ("GET", f"/v1/runs/{run['run_id']}/vars"),
        ("POST", f"/v1/runs/{run['run_id']}/cancel"),
        ("GET", f"/v1/runs/{run['run_id']}/subscribe"),
    ):
        hot_error(await hot.request(method, path, headers=theirs), 404, "not_found")
    assert (await hot.get("/v1/runs", headers=theirs)).json()["data"] == []
    stats = (await hot.get("/v1/runs/stats", headers=theirs)).json()["data"]
    assert stats["total_runs"] == 0
    # and the run was not cancelled by them
    assert (await hot.get(f"/v1/runs/{run['run_id']}")).json()["data"]["status"] == "queued"


async def test_stats_count_every_status(hot: httpx.AsyncClient) -> None:
    empty = (await hot.get("/v1/runs/stats")).json()
    assert empty["data"] == {
        "total_runs": 0,
        "queued": 0,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
    }
    worker = Worker(services_of(hot))
    for _ in range(3):
        await publish(hot, "user.signup", {})  # 6 runs
    started = await worker.start(limit=3)
    await worker.succeed(started[0], 1)
    await worker.fail(started[1], "no")
    queued = await listed(hot, status="queued")
    assert (await hot.post(f"/v1/runs/{queued[0]['run_id']}/cancel")).status_code == 200
    stats = (await hot.get("/v1/runs/stats")).json()["data"]
    assert stats == {
        "total_runs": 6,
        "queued": 2,
        "running": 1,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 1,
    }


async def test_cancel(hot: httpx.AsyncClient) -> None:
    services = services_of(hot)
    worker = Worker(services)
    event = await publish(hot, "user.signup", {})
    [running] = await worker.start(limit=1)
    [queued] = [r for r in await listed(hot) if r["status"] == "queued"]

    answer = await hot.post(f"/v1/runs/{queued['run_id']}/cancel")
    assert answer.status_code == 200, answer.text
    cancelled = answer.json()["data"]
    assert cancelled["status"] == "cancelled" and ISO_Z.match(cancelled["stop_time"])
    # a queued run is never claimed once cancelled
    assert await worker.start() == []
    # its stream says so; the stream is not complete while the other run runs
    items = [i.data for i in await services.streams.read(event["stream_id"])]
    mine = [i for i in items if i.get("run", {}).get("run_id") == queued["run_id"]]
    assert [i["type"] for i in mine] == ["run:cancel", "run:update"]
    assert mine[-1]["run"]["status"] == "cancelled"
    assert "stream:complete" not in [i["type"] for i in items]

    # a running run is asked to stop: its worker acknowledges
    answer = await hot.post(f"/v1/runs/{running.run_id}/cancel")
    assert answer.status_code == 200 and answer.json()["data"]["status"] == "running"
    assert await worker.queue.cancel_requested([running.run_id]) == {running.run_id}
    assert await worker.queue.cancelled(running.run_id, running.fence)
    assert (await hot.get(f"/v1/runs/{running.run_id}")).json()["data"]["status"] == "cancelled"

    # a finished run stays as it is, and cancelling again changes nothing
    again = await hot.post(f"/v1/runs/{queued['run_id']}/cancel")
    assert again.status_code == 200 and again.json()["data"] == cancelled
    items = [i.data for i in await services.streams.read(event["stream_id"])]
    assert [i["type"] for i in items].count("run:cancel") == 1


async def test_cancelling_the_last_run_completes_the_stream(hot: httpx.AsyncClient) -> None:
    services = services_of(hot)
    event = await publish(hot, "user.deleted", {})
    [run] = await listed(hot)
    assert (await hot.post(f"/v1/runs/{run['run_id']}/cancel")).status_code == 200
    items = [i.data for i in await services.streams.read(event["stream_id"])]
    assert [i["type"] for i in items] == [
        "event:published",
        "run:cancel",
        "run:update",
        "stream:complete",
    ]


async def test_vars(hot: httpx.AsyncClient) -> None:
    services = services_of(hot)
    await publish(hot, "user.signup", {})
    run, other = await listed(hot)
    assert (await hot.get(f"/v1/runs/{run['run_id']}/vars")).json()["data"] == []
    start = utcnow()
    rows = [
        {
            "var_id": new_id(),
            "run_id": run["run_id"],
            "env_id": run["env_id"],
            "ns": run["ns"],
            "var": f"step-{n}",
            "value": {"n": n, "text": "Zoë"},
            "meta": {"unit": "count"} if n == 0 else None,
            "start_time": start + timedelta(milliseconds=n),
            "stop_time": start + timedelta(milliseconds=n + 1),
        }
        for n in range(3)
    ]
    async with services.db.write() as conn:
        await run_vars.insert(conn, rows)
    body = (await hot.get(f"/v1/runs/{run['run_id']}/vars")).json()
    assert body["pagination"] == {"total": 3, "limit": 20, "offset": 0, "has_more": False}
    first = body["data"][0]
    assert first == {
        "var_id": rows[0]["var_id"],
        "run_id": run["run_id"],
        "ns": "::hello::handlers",
        "var": "step-0",
        "value": {"n": 0, "text": "Zoë"},
        "meta": {"unit": "count"},
        "start_time": first["start_time"],
        "stop_time": first["stop_time"],
    }
    assert ISO_Z.match(first["start_time"]) and ISO_Z.match(first["stop_time"])
    assert [v["var"] for v in body["data"]] == ["step-0", "step-1", "step-2"]
    page = (await hot.get(f"/v1/runs/{run['run_id']}/vars?limit=1&offset=1")).json()
    assert [v["var"] for v in page["data"]] == ["step-1"] and page["pagination"]["has_more"]
    assert (await hot.get(f"/v1/runs/{other['run_id']}/vars")).json()["data"] == []


async def test_quota_counts_running_runs_live(hot: httpx.AsyncClient) -> None:
    quota = (await hot.get("/v1/env/quota")).json()["data"]
    assert quota["max_concurrent_runs"] == 50 and quota["compute_used_percent"] == 0
    assert quota["running_runs"] == 0 and quota["queued_runs"] == 0
    assert quota["storage_used_percent"] == 0 and quota["requests_per_hour"] == 1000
    worker = Worker(services_of(hot))
    for _ in range(5):
        await publish(hot, "user.signup", {})  # 10 runs
    await worker.start(limit=5)
    quota = (await hot.get("/v1/env/quota")).json()["data"]
    assert quota["running_runs"] == 5 and quota["queued_runs"] == 5
    assert quota["compute_used_percent"] == 10
    theirs = await other_environment(services_of(hot))
    assert (await hot.get("/v1/env/quota", headers=theirs)).json()["data"]["running_runs"] == 0
