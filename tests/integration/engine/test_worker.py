"""The run worker on real SQLite and PostgreSQL, with an in-memory executor: the stream of a
run in order, retries bounded by max_attempts, cancel (queued: never starts; running: stopped
within a second), timeouts, a lost lease fenced, events published by handlers, captured vars,
max_concurrent_runs, the sweeper, and a graceful stop."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import sqlalchemy as sa

from agentplex.bus.memory import MemoryBus
from agentplex.core.builds import BuildService
from agentplex.core.clock import utcnow
from agentplex.core.events import MAX_CHAIN_DEPTH, TERMINAL
from agentplex.core.manifest import FunctionRef
from agentplex.core.projects import ProjectService
from agentplex.core.runs import RunService
from agentplex.core.streams import StreamItem, StreamStore
from agentplex.db.engine import Database
from agentplex.db.records import run_vars as var_records
from agentplex.db.tables import events, runs, stream_items
from agentplex.engine.queue import RunQueue
from agentplex.engine.worker import Sweeper, UnavailableExecutor
from tests.integration.engine.conftest import (
    Context,
    Engine,
    MemoryExecutor,
    deploy,
    queue_runs,
    set_max_concurrent,
    wait_for,
)

SIGNUP = "hello.tasks:on_signup"
FILES = {
    "hello/__init__.py": "",
    "hello/tasks.py": "def on_signup(e):\n    pass\n\ndef audit(e):\n    pass\n\n"
    "def followup(e):\n    pass\n\ndef run(*a):\n    pass\n",
}
MANIFEST = {
    "handlers": [{"event": "user.signup", "function": SIGNUP}],
    "functions": ["hello.tasks:run"],
}


async def _true(value: bool) -> bool:
    return value


def types(items: list[StreamItem]) -> list[str]:
    return [str(i.data["type"]) for i in items]


def completed(items: list[StreamItem]) -> bool:
    return "stream:complete" in types(items)


async def run_row(db: Database, run_id: str) -> dict[str, Any]:
    async with db.read() as conn:
        row = (await conn.execute(sa.select(runs).where(runs.c.run_id == run_id))).first()
    assert row is not None
    return dict(row._mapping)


async def status_of(db: Database, run_id: str) -> str:
    return str((await run_row(db, run_id))["status"])


async def finished(db: Database, run_id: str) -> bool:
    return await status_of(db, run_id) in TERMINAL


async def test_a_run_streams_in_order_and_succeeds(
    engine: Engine,
    executor: MemoryExecutor,
    builds: BuildService,
    db: Database,
    env_id: str,
    project_id: str,
) -> None:
    await engine.secrets.create(env_id, "hello", "API_TOKEN", "s3cret")
    build_id = await deploy(builds, env_id, "hello", MANIFEST, FILES)

    async def on_signup(ctx: Context, event: dict[str, Any]) -> dict[str, Any]:
        ctx.print("hello\n")
        ctx.emit({"step": 1})
        ctx.capture("user", event["event_data"]["user"], {"source": "signup"})
        ctx.capture("score", 42)
        return {"welcomed": event["event_data"]["user"]}

    executor.functions[SIGNUP] = on_signup
    await engine.worker()
    published = await engine.publish(env_id, "user.signup", {"user": "zoë"})
    (run,) = published.runs
    items = await engine.wait_items(published.event.stream_id, completed)

    assert types(items) == [
        "event:published",
        "run:start",
        "run:update",
        "stream:data",
        "stream:data",
        "run:stop",
        "run:update",
        "stream:complete",
    ]
    first = items[0].data
    assert first["event_id"] == published.event.event_id
    assert first["event_type"] == "user.signup" and first["event_data"] == {"user": "zoë"}
    assert first["stream_id"] == published.event.stream_id and first["env_id"] == env_id
    assert items[1].data["run"]["status"] == "running"
    assert items[2].data["run"]["status"] == "running"
    assert items[2].data["run"]["start_time"] is not None
    text, data = items[3].data, items[4].data
    assert text["run_id"] == run.run_id and text["data_type"] == "text"
    assert text["payload"]["text"] == "hello\n" and text["stream_data_id"]
    assert data["data_type"] == "json" and data["payload"] == {"step": 1}
    stop, update = items[5].data["run"], items[6].data["run"]
    assert stop == update
    assert update["status"] == "succeeded" and update["result"] == {"$ok": {"welcomed": "zoë"}}
    assert update["build_id"] == build_id and update["ns"] == "::hello::tasks"
    assert update["var"] == "on_signup" and update["attempt"] == 1
    assert update["stop_time"] is not None and update["error"] is None
    assert items[7].data == {"type": "stream:complete", "stream_id": published.event.stream_id}
    assert [i.id for i in items] == sorted(i.id for i in items)

    stored = await run_row(db, run.run_id)
    assert stored["status"] == "succeeded" and stored["result"] == {"$ok": {"welcomed": "zoë"}}
    assert stored["lease_owner"] is None and stored["stopped_at"] is not None
    (job,) = executor.jobs
    assert job.secrets == {"API_TOKEN": "s3cret"} and job.build_id == build_id
    assert job.input["event_data"] == {"user": "zoë"} and job.function == SIGNUP
    async with db.read() as conn:
        found, total = await var_records.page(conn, run.run_id)
    assert total == 2
    assert [(v["ns"], v["var"], v["value"], v["meta"]) for v in found] == [
        ("::hello::tasks", "user", "zoë", {"source": "signup"}),
        ("::hello::tasks", "score", 42, None),
    ]


async def test_the_stream_completes_once_every_run_of_the_event_ended(
    engine: Engine, executor: MemoryExecutor, builds: BuildService, env_id: str, project_id: str
) -> None:
    manifest = {
        "handlers": [
            {"event": "user.signup", "function": SIGNUP},
            {"event": "user.signup", "function": "hello.tasks:audit"},
        ]
    }
    await deploy(builds, env_id, "hello", manifest, FILES)
    release = asyncio.Event()

    async def slow(ctx: Context, event: Any) -> str:
        await release.wait()
        return "audited"

    executor.functions[SIGNUP] = lambda ctx, event: "fast"
    executor.functions["hello.tasks:audit"] = slow
    await engine.worker()
    published = await engine.publish(env_id, "user.signup", {})
    stream = published.event.stream_id
    await engine.wait_items(stream, lambda items: "run:stop" in types(items))
    await asyncio.sleep(0.2)
    assert not completed(await engine.items(stream))  # the audit still runs
    release.set()
    items = await engine.wait_items(stream, completed)
    assert Counter(types(items))["run:stop"] == 2 and types(items)[-1] == "stream:complete"
    assert Counter(types(items))["stream:complete"] == 1

    # an event nobody handles completes at once
    nobody = await engine.publish(env_id, "nobody.listens", {})
    assert types(await engine.items(nobody.event.stream_id)) == [
        "event:published",
        "stream:complete",
    ]


async def test_failures_retry_with_backoff_and_never_exceed_max_attempts(
    engine: Engine, executor: MemoryExecutor, db: Database, env_id: str, project_id: str
) -> None:
    attempts: Counter[str] = Counter()

    def always(ctx: Context, args: Any) -> None:
        attempts[ctx.job.run_id] += 1
        raise ValueError("no luck")

    def third_time(ctx: Context, args: Any) -> str:
        attempts[ctx.job.run_id] += 1
        if attempts[ctx.job.run_id] < 3:
            raise RuntimeError("not yet")
        return "made it"

    executor.functions["hello.tasks:always"] = always
    executor.functions["hello.tasks:third"] = third_time
    (failing,) = await queue_runs(
        db, env_id, project_id, 1, max_attempts=3, function=FunctionRef("hello.tasks", "always")
    )
    (lucky,) = await queue_runs(
        db, env_id, project_id, 1, max_attempts=3, function=FunctionRef("hello.tasks", "third")
    )
    await engine.worker(backoff_base_seconds=0.05)
    await wait_for(lambda: finished(db, failing), what="the failing run to end")
    await wait_for(lambda: finished(db, lucky), what="the lucky run to end")
    await asyncio.sleep(0.3)  # nothing runs it again

    row = await run_row(db, failing)
    assert attempts[failing] == 3 and row["attempt"] == 3 and row["retry_attempt"] == 2
    assert row["status"] == "failed"
    assert row["result"] == {"$err": {"type": "ValueError", "message": "no luck"}}
    assert row["error"]["type"] == "ValueError" and "Traceback" in row["error"]["traceback"]
    items = [i.data for i in await engine.items(row["stream_id"])]
    retries = [
        i["run"] for i in items if i["type"] == "run:update" and i["run"]["status"] == "queued"
    ]
    assert [r["retry_attempt"] for r in retries] == [1, 2]
    assert all(r["next_retry_at"] is not None for r in retries)
    assert Counter(i["type"] for i in items)["run:start"] == 3
    assert Counter(i["type"] for i in items)["run:fail"] == 1
    assert items[-1]["type"] == "stream:complete"

    lucky_row = await run_row(db, lucky)
    assert lucky_row["status"] == "succeeded" and lucky_row["attempt"] == 3
    assert lucky_row["result"] == {"$ok": "made it"}


async def test_a_cancelled_queued_run_never_starts(
    engine: Engine, executor: MemoryExecutor, db: Database, env_id: str, project_id: str
) -> None:
    executor.functions["hello.tasks:run"] = lambda ctx, args: "ran"
    cancelled, kept = await queue_runs(db, env_id, project_id, 2)
    run = await engine.queue.cancel(env_id, cancelled)
    assert run.status == "cancelled"
    await engine.worker()
    await wait_for(lambda: finished(db, kept), what="the other run")
    await asyncio.sleep(0.2)
    assert [j.run_id for j in executor.jobs] == [kept]
    assert await status_of(db, cancelled) == "cancelled"


async def test_cancelling_a_running_run_stops_it_within_a_second(
    engine: Engine, executor: MemoryExecutor, db: Database, env_id: str, project_id: str
) -> None:
    async def forever(ctx: Context, args: Any) -> None:
        ctx.print("working\n")
        await asyncio.sleep(3600)

    executor.functions["hello.tasks:run"] = forever
    (run_id,) = await queue_runs(db, env_id, project_id, 1)
    await engine.worker()
    await asyncio.wait_for(executor.started_event(run_id).wait(), 10)
    started = time.monotonic()
    await engine.queue.cancel(env_id, run_id)
    await wait_for(lambda: finished(db, run_id), timeout=1.0, what="the cancel")
    assert time.monotonic() - started < 1.0
    row = await run_row(db, run_id)
    assert row["status"] == "cancelled" and executor.cancelled == [run_id]
    assert row["result"] == {"$err": {"type": "Cancelled", "message": "the run was cancelled"}}
    items = await engine.wait_items(row["stream_id"], completed)
    assert types(items)[-3:] == ["run:cancel", "run:update", "stream:complete"]
    assert items[-2].data["run"]["status"] == "cancelled"


async def test_a_cancel_from_another_process_is_seen(
    engine: Engine,
    executor: MemoryExecutor,
    db: Database,
    env_id: str,
    project_id: str,
    database_url: str,
) -> None:
    """Another process's cancel: a NOTIFY on PostgreSQL, the worker's look at the runs on
    SQLite; either way within a second."""

    async def forever(ctx: Context, args: Any) -> None:
        await asyncio.sleep(3600)

    executor.functions["hello.tasks:run"] = forever
    (run_id,) = await queue_runs(db, env_id, project_id, 1)
    await engine.worker()
    await asyncio.wait_for(executor.started_event(run_id).wait(), 10)
    other = Database(database_url)
    try:
        started = time.monotonic()
        await RunQueue(other).cancel(env_id, run_id)  # its own queue: no in-process callback
        await wait_for(lambda: finished(db, run_id), timeout=1.5, what="the cancel")
        assert time.monotonic() - started < 1.5
    finally:
        await other.dispose()
    assert await status_of(db, run_id) == "cancelled"


async def test_a_handler_running_past_its_timeout_fails(
    engine: Engine, executor: MemoryExecutor, db: Database, env_id: str, project_id: str
) -> None:
    async def slow(ctx: Context, args: Any) -> None:
        await asyncio.sleep(60)

    executor.functions["hello.tasks:run"] = slow
    (run_id,) = await queue_runs(db, env_id, project_id, 1, max_attempts=1, timeout_seconds=0.3)
    started = time.monotonic()
    await engine.worker()
    await wait_for(lambda: finished(db, run_id), timeout=5, what="the timeout")
    assert time.monotonic() - started < 3
    row = await run_row(db, run_id)
    assert row["status"] == "failed" and row["error"]["type"] == "TimeoutError"
    assert row["error"]["message"] == "the handler ran longer than its timeout of 0.3 s"
    assert executor.jobs[0].timeout_seconds == 0.3

    # no timeout on the run: the settings' default
    (other,) = await queue_runs(db, env_id, project_id, 1, max_attempts=1)
    executor.functions["hello.tasks:run"] = lambda ctx, args: "quick"
    await wait_for(lambda: finished(db, other), what="the quick run")
    assert executor.jobs[-1].timeout_seconds == 300


async def test_a_timeout_the_build_declares_for_a_function_bounds_its_runs(
    engine: Engine, executor: MemoryExecutor, builds: BuildService, env_id: str, project_id: str
) -> None:
    async def slow(ctx: Context, args: Any) -> None:
        await asyncio.sleep(60)

    executor.functions["hello.tasks:run"] = slow
    manifest = {"handlers": [{"event": "slow", "function": "hello.tasks:run", "timeout": 0.4}]}
    await deploy(builds, env_id, "hello", manifest)
    await engine.worker()
    started = time.monotonic()
    published = await engine.publish(env_id, "slow", {})
    items = await engine.wait_items(
        published.event.stream_id, lambda got: any(i.data["type"] == "run:fail" for i in got)
    )
    assert time.monotonic() - started < 4
    failed = next(i.data["run"] for i in items if i.data["type"] == "run:fail")
    assert failed["error"]["message"] == "the handler ran longer than its timeout of 0.4 s"
    assert executor.jobs[0].timeout_seconds == 0.4


async def test_a_late_finisher_whose_lease_was_lost_writes_nothing(
    engine: Engine, executor: MemoryExecutor, db: Database, env_id: str, project_id: str
) -> None:
    """The lease expires while the handler still runs (the worker stalled); the run is swept
    and claimed by another worker; the first one's outcome is fenced off."""
    release = asyncio.Event()

    async def stalled(ctx: Context, args: Any) -> str:
        await release.wait()
        return "late"

    executor.functions["hello.tasks:run"] = stalled
    (run_id,) = await queue_runs(db, env_id, project_id, 1)
    await engine.worker(workers=1, heartbeat_seconds=3600)
    await asyncio.wait_for(executor.started_event(run_id).wait(), 10)
    async with db.write() as conn:  # the lease ran out
        await conn.execute(
            sa.update(runs).where(runs.c.run_id == run_id).values(lease_expires_at=utcnow())
        )
    sweeper = Sweeper(db, engine.streams, engine.queue, engine.settings())
    assert await sweeper.sweep() == [(run_id, "queued")]
    thief = RunQueue(db)
    (claimed,) = await thief.claim("thief", limit=1, lease_seconds=30)
    assert claimed.run_id == run_id and claimed.fence == 2

    release.set()  # the first holder finishes now, fenced off
    await asyncio.sleep(0.5)
    row = await run_row(db, run_id)
    assert row["status"] == "running" and row["lease_owner"] == "thief"
    assert await thief.complete(run_id, claimed.fence, {"$ok": "thief"})
    row = await run_row(db, run_id)
    assert row["status"] == "succeeded" and row["result"] == {"$ok": "thief"}
    items = await engine.items(row["stream_id"])
    assert "run:stop" not in types(items)  # the late finisher wrote no end


async def test_a_lost_lease_stops_the_run_and_it_runs_again(
    engine: Engine, executor: MemoryExecutor, db: Database, env_id: str, project_id: str
) -> None:
    """A heartbeat finds the lease gone (the run was swept): the worker stops the handler and
    writes nothing; the run is claimed again and ends once."""

    async def first_hangs(ctx: Context, args: Any) -> str:
        if len([j for j in executor.jobs if j.run_id == ctx.job.run_id]) == 1:
            await asyncio.sleep(3600)
        return "second"

    executor.functions["hello.tasks:run"] = first_hangs
    (run_id,) = await queue_runs(db, env_id, project_id, 1)
    await engine.worker(workers=2, heartbeat_seconds=0.2)
    await asyncio.wait_for(executor.started_event(run_id).wait(), 10)
    sweeper = Sweeper(db, engine.streams, engine.queue, engine.settings())
    for _ in range(50):  # a heartbeat may renew the lease between the two: expire it again
        async with db.write() as conn:
            await conn.execute(
                sa.update(runs).where(runs.c.run_id == run_id).values(lease_expires_at=utcnow())
            )
        if await sweeper.sweep():
            break
    await wait_for(lambda: finished(db, run_id), what="the second attempt")
    row = await run_row(db, run_id)
    assert row["status"] == "succeeded" and row["result"] == {"$ok": "second"}
    assert row["attempt"] == 2
    await wait_for(lambda: _true(executor.cancelled == [run_id]), what="the first attempt stopped")
    items = await engine.wait_items(row["stream_id"], completed)
    counts = Counter(types(items))
    assert counts["run:stop"] == 1 and counts["run:start"] == 2 and counts["stream:complete"] == 1
    assert counts["run:fail"] == 0 and counts["run:cancel"] == 0


async def test_an_event_published_by_a_handler_names_its_origin(
    engine: Engine,
    executor: MemoryExecutor,
    builds: BuildService,
    db: Database,
    env_id: str,
    project_id: str,
) -> None:
    manifest = {
        "handlers": [
            {"event": "user.signup", "function": SIGNUP},
            {"event": "user.welcomed", "function": "hello.tasks:followup"},
        ]
    }
    await deploy(builds, env_id, "hello", manifest, FILES)

    def on_signup(ctx: Context, event: Any) -> None:
        ctx.publish("user.welcomed", {"user": 1})
        ctx.publish("", {})  # invalid: reported on the run's stream, the run goes on

    executor.functions[SIGNUP] = on_signup
    executor.functions["hello.tasks:followup"] = lambda ctx, event: event["event_data"]
    await engine.worker()
    published = await engine.publish(env_id, "user.signup", {})
    (origin,) = published.runs
    items = await engine.wait_items(published.event.stream_id, completed)
    errors = [i.data for i in items if i.data["type"] == "stream:data"]
    assert len(errors) == 1 and "event_type is required" in errors[0]["payload"]["text"]
    assert (await run_row(db, origin.run_id))["status"] == "succeeded"
    async with db.read() as conn:
        rows = (
            await conn.execute(sa.select(events).where(events.c.event_type == "user.welcomed"))
        ).all()
    (event,) = rows
    assert event.origin_run_id == origin.run_id
    async with db.read() as conn:
        (child,) = (
            await conn.execute(sa.select(runs).where(runs.c.event_id == event.event_id))
        ).all()
    assert child.origin_run_id == origin.run_id
    await wait_for(lambda: finished(db, child.run_id), what="the follow-up run")
    child_items = await engine.wait_items(event.stream_id, completed)
    assert types(child_items)[0] == "event:published"
    assert child_items[-2].data["run"]["result"] == {"$ok": {"user": 1}}


async def test_a_handler_publishing_the_event_that_runs_it_stops_after_8_links(
    engine: Engine,
    executor: MemoryExecutor,
    builds: BuildService,
    db: Database,
    env_id: str,
    project_id: str,
) -> None:
    """A handler that publishes its own event would loop forever (and starve every other
    project): the chain stops at `MAX_CHAIN_DEPTH`, saying why on the last run's stream."""
    await deploy(builds, env_id, "hello", {"handlers": [{"event": "loop", "function": SIGNUP}]})
    executor.functions[SIGNUP] = lambda ctx, event: ctx.publish("loop", {})
    await engine.worker()
    await engine.publish(env_id, "loop", {})

    async def refused() -> bool:
        async with db.read() as conn:
            texts = (await conn.execute(sa.select(stream_items.c.data))).scalars()
            return any("chain of events" in str(t) for t in texts)

    await wait_for(refused, what="the chain's end")
    await asyncio.sleep(0.5)  # nothing more comes
    async with db.read() as conn:
        count = (await conn.execute(sa.select(sa.func.count()).select_from(events))).scalar()
    assert count == 1 + MAX_CHAIN_DEPTH


async def test_max_concurrent_runs_holds_and_the_excess_waits_queued(
    engine: Engine, executor: MemoryExecutor, db: Database, env_id: str, project_id: str
) -> None:
    await set_max_concurrent(db, env_id, 2)
    now_running = 0
    most = 0

    async def busy(ctx: Context, args: Any) -> None:
        nonlocal now_running, most
        now_running += 1
        most = max(most, now_running)
        await asyncio.sleep(0.15)
        now_running -= 1

    executor.functions["hello.tasks:run"] = busy
    ids = await queue_runs(db, env_id, project_id, 8)
    await engine.worker(workers=6)
    await engine.worker(workers=6)
    await asyncio.sleep(0.1)
    async with db.read() as conn:
        counted = dict(
            (
                await conn.execute(
                    sa.select(runs.c.status, sa.func.count()).group_by(runs.c.status)
                )
            ).all()
        )
    assert counted.get("running", 0) <= 2 and counted.get("queued", 0) >= 6
    for run_id in ids:
        await wait_for(lambda run_id=run_id: finished(db, run_id), what="every run")
    assert most == 2
    assert {await status_of(db, r) for r in ids} == {"succeeded"}


async def test_the_sweeper_takes_back_a_dead_workers_runs(
    engine: Engine, executor: MemoryExecutor, db: Database, env_id: str, project_id: str
) -> None:
    executor.functions["hello.tasks:run"] = lambda ctx, args: "done"
    again, spent = await queue_runs(db, env_id, project_id, 2, max_attempts=1)
    dead = RunQueue(db)
    claimed = await dead.claim("dead", limit=2, lease_seconds=0.1)
    assert {r.run_id for r in claimed} == {again, spent}
    async with db.write() as conn:  # ``again`` has an attempt left
        await conn.execute(sa.update(runs).where(runs.c.run_id == again).values(max_attempts=2))
    await asyncio.sleep(0.2)
    sweeper = Sweeper(db, engine.streams, engine.queue, engine.settings())
    assert sorted(await sweeper.sweep()) == sorted([(again, "queued"), (spent, "failed")])
    spent_row = await run_row(db, spent)
    assert spent_row["error"]["type"] == "LeaseExpired"
    items = await engine.items(spent_row["stream_id"])
    assert types(items) == ["run:fail", "run:update", "stream:complete"]

    await engine.worker()
    await wait_for(lambda: finished(db, again), what="the swept run")
    row = await run_row(db, again)
    assert row["status"] == "succeeded" and row["attempt"] == 2
    items = await engine.items(row["stream_id"])
    assert types(items) == [
        "run:update",  # queued again by the sweeper
        "run:start",
        "run:update",
        "run:stop",
        "run:update",
        "stream:complete",
    ]

    # the sweeper loop
    stop = asyncio.Event()
    task = asyncio.create_task(
        Sweeper(db, engine.streams, engine.queue, engine.settings(sweep_seconds=0.05)).run(stop)
    )
    await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(task, 2)


async def test_stopping_queues_unfinished_runs_again(
    engine: Engine, executor: MemoryExecutor, db: Database, env_id: str, project_id: str
) -> None:
    async def slow(ctx: Context, args: Any) -> str:
        if len(executor.jobs) == 1:
            await asyncio.sleep(3600)
        return "finished elsewhere"

    executor.functions["hello.tasks:run"] = slow
    (run_id,) = await queue_runs(db, env_id, project_id, 1)
    worker = await engine.worker()
    await asyncio.wait_for(executor.started_event(run_id).wait(), 10)
    started = time.monotonic()
    await worker.stop(grace=0.2)
    assert time.monotonic() - started < 2
    row = await run_row(db, run_id)
    assert row["status"] == "queued" and row["error"]["type"] == "WorkerStopped"
    assert row["lease_owner"] is None
    assert (row["attempt"], row["retry_attempt"]) == (0, 0)  # the attempt is given back
    await engine.worker()
    await wait_for(lambda: finished(db, run_id), what="the run on another worker")
    assert (await run_row(db, run_id))["result"] == {"$ok": "finished elsewhere"}


async def test_a_follower_on_another_bus_gets_the_workers_items(
    engine: Engine, executor: MemoryExecutor, db: Database, env_id: str, project_id: str
) -> None:
    """Items written in another process (another in-memory bus) reach a follower through
    its look at the store."""
    executor.functions["hello.tasks:run"] = lambda ctx, args: "hi"
    (run_id,) = await queue_runs(db, env_id, project_id, 1)
    stream_id = (await run_row(db, run_id))["stream_id"]
    elsewhere = StreamStore(db, MemoryBus(), poll_seconds=0.1)
    seen: list[str] = []

    async def follow() -> None:
        async for item in elsewhere.follow(stream_id):
            seen.append(str(item.data["type"]))
            if item.data["type"] == "stream:complete":
                return

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.2)
    await engine.worker()
    await asyncio.wait_for(follower, 5)
    assert seen == ["run:start", "run:update", "run:stop", "run:update", "stream:complete"]


async def test_without_an_executor_runs_fail_saying_why(
    engine: Engine, db: Database, env_id: str, project_id: str
) -> None:
    (run_id,) = await queue_runs(db, env_id, project_id, 1, max_attempts=3)
    await engine.worker(UnavailableExecutor("sandboxes are disabled (sandbox.enabled = false)"))
    await wait_for(lambda: finished(db, run_id), what="the run to fail")
    row = await run_row(db, run_id)
    assert row["status"] == "failed" and row["attempt"] == 1  # no retry: nothing could run it
    assert "sandboxes are disabled" in row["error"]["message"]


async def test_many_runs_each_end_exactly_once(
    engine: Engine, executor: MemoryExecutor, db: Database, env_id: str, project_id: str
) -> None:
    await set_max_concurrent(db, env_id, 1000)

    def flaky(ctx: Context, args: Any) -> int:
        if args["args"][0] % 7 == 0 and ctx.job.run_id not in seen_fail:
            seen_fail.add(ctx.job.run_id)
            raise RuntimeError("once")
        return int(args["args"][0])

    seen_fail: set[str] = set()
    executor.functions["hello.tasks:run"] = flaky
    ids = await queue_runs(db, env_id, project_id, 300)
    for _ in range(3):
        await engine.worker(workers=8, backoff_base_seconds=0.01)
    started = time.monotonic()

    async def all_done() -> bool:
        async with db.read() as conn:
            n = (
                await conn.execute(
                    sa.select(sa.func.count()).select_from(runs).where(runs.c.status.in_(TERMINAL))
                )
            ).scalar_one()
        return int(n) == len(ids)

    await wait_for(all_done, timeout=60, what="300 runs")
    elapsed = time.monotonic() - started
    async with db.read() as conn:
        rows = (await conn.execute(sa.select(runs.c.status, runs.c.result, runs.c.stream_id))).all()
    assert {r.status for r in rows} == {"succeeded"}
    ends = Counter()
    for row in rows:
        items = types(await engine.items(row.stream_id))
        ends[(items.count("run:stop"), items.count("stream:complete"))] += 1
    assert ends == Counter({(1, 1): 300})
    print(f"300 runs in {elapsed:.2f} s ({300 / elapsed:.0f}/s)")


async def test_deleting_a_project_ends_its_runs_and_their_streams_at_once(
    engine: Engine,
    executor: MemoryExecutor,
    builds: BuildService,
    db: Database,
    env_id: str,
    project_id: str,
) -> None:
    """A run whose project is deleted under it is cancelled, its code stopped, and its
    stream says so (the SDK's call_hot waited ~20 s on a run that had vanished)."""

    async def slow(ctx: Context, args: Any) -> None:
        await asyncio.sleep(60)

    await deploy(builds, env_id, "hello", {"handlers": [{"event": "e", "function": SIGNUP}]})
    executor.functions[SIGNUP] = slow
    await engine.worker(workers=1)
    running = await engine.publish(env_id, "e", {})
    await asyncio.wait_for(executor.started_event(running.runs[0].run_id).wait(), 10)
    queued = await engine.publish(env_id, "e", {})  # behind it: the one slot is taken
    service = RunService(db, engine.queue, engine.streams)

    ended = await service.end_project(env_id, project_id)
    assert {r.run_id for r in ended} == {running.runs[0].run_id, queued.runs[0].run_id}
    await ProjectService(db).delete(env_id, project_id)
    for published in (running, queued):
        items = await engine.wait_items(published.event.stream_id, completed, timeout=3)
        cancel = next(i.data for i in items if i.data["type"] == "run:cancel")
        assert cancel["run"]["error"]["message"] == "the run was cancelled: its project was deleted"
    await wait_for(
        lambda: _true(executor.cancelled == [running.runs[0].run_id]), what="the code stopped"
    )
    assert await service.end_project(env_id, project_id) == []


async def test_a_calls_code_error_is_final_at_once(
    engine: Engine, executor: MemoryExecutor, db: Database, env_id: str, project_id: str
) -> None:
    """The caller of hot:call waits on it: the same arguments would fail the same way, so a
    code error is not retried (an event's run is, see above)."""
    calls: Counter[str] = Counter()

    def broken(ctx: Context, args: Any) -> None:
        calls[ctx.job.run_id] += 1
        raise TypeError("add() takes 2 positional arguments but 3 were given")

    executor.functions["hello.tasks:run"] = broken
    (run_id,) = await queue_runs(db, env_id, project_id, 1, max_attempts=3, run_type="call")
    await engine.worker(backoff_base_seconds=0.05)
    await wait_for(lambda: finished(db, run_id), what="the call to fail")
    await asyncio.sleep(0.3)
    row = await run_row(db, run_id)
    assert row["status"] == "failed" and calls[run_id] == 1 and row["attempt"] == 1
    assert row["result"]["$err"]["type"] == "TypeError"


async def test_a_flood_of_one_projects_runs_leaves_a_slot_to_other_projects(
    engine: Engine, executor: MemoryExecutor, db: Database, env_id: str, project_id: str
) -> None:
    """One project may hold all but an eighth of a worker's slots (one at least): another
    project's run starts at once instead of waiting behind the flood."""
    release = asyncio.Event()

    async def slow(ctx: Context, args: Any) -> str:
        if ctx.job.project_id == project_id:
            await release.wait()
        return "done"

    executor.functions["hello.tasks:run"] = slow
    flood = await queue_runs(db, env_id, project_id, 8)
    other_project = (await ProjectService(db).create(env_id, "other")).project_id
    await engine.worker(workers=4)
    await wait_for(lambda: _true(len(executor.jobs) == 3), what="3 of the flood's runs")
    (other,) = await queue_runs(db, env_id, other_project, 1)
    engine.queue.notify()
    await wait_for(lambda: finished(db, other), timeout=3, what="the other project's run")
    assert len({j.run_id for j in executor.jobs} & set(flood)) == 3  # the 4th slot was kept
    release.set()
    for run_id in flood:
        await wait_for(lambda run_id=run_id: finished(db, run_id), what="the flood")
