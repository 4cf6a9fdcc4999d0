"""The durable run queue on real SQLite and PostgreSQL: claim order, no double claim between
racing claimers, the fencing of a lost lease, bounded retries, cancel, per-environment
concurrency, wake-ups, and 500 runs drained by 4 claimers to exactly one terminal state each."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import timedelta

import pytest
import sqlalchemy as sa

from agentplex.core import environments
from agentplex.core.clock import utcnow
from agentplex.core.events import TERMINAL, Run, publish
from agentplex.core.projects import ProjectService
from agentplex.db.engine import Database
from agentplex.db.tables import runs
from agentplex.engine.queue import RunQueue
from agentplex.errors import RunNotFound
from tests.integration.engine.conftest import (
    Clock,
    queue_runs,
    set_max_concurrent,
    statuses,
)

ERROR = {"message": "boom", "traceback": "Traceback ..."}


async def test_claim_takes_the_oldest_due_runs(db: Database, env_id: str, project_id: str) -> None:
    ids = await queue_runs(db, env_id, project_id, 5)
    future = await queue_runs(
        db, env_id, project_id, 1, start=utcnow() + timedelta(hours=1)
    )  # not due yet
    queue = RunQueue(db)
    first = await queue.claim("w1", limit=2, lease_seconds=30)
    assert [r.run_id for r in first] == ids[:2]
    for run in first:
        assert run.status == "running" and run.fence == 1 and run.attempt == 1
        assert run.lease_owner == "w1" and run.started_at is not None
        assert run.lease_expires_at is not None and run.lease_expires_at > utcnow()
    rest = await queue.claim("w2", limit=10, lease_seconds=30)
    assert [r.run_id for r in rest] == ids[2:]
    assert await queue.claim("w3", limit=10) == []
    assert (await statuses(db))[future[0]] == "queued"
    assert await queue.next_due() is not None


async def test_racing_claimers_never_take_the_same_run(
    db: Database, env_id: str, project_id: str, database_url: str
) -> None:
    await set_max_concurrent(db, env_id, 1000)
    ids = await queue_runs(db, env_id, project_id, 200)
    engines = [Database(database_url) for _ in range(4)]
    try:
        queues = [RunQueue(e) for e in engines]

        async def claimer(i: int) -> list[str]:
            got: list[str] = []
            while batch := await queues[i].claim(f"w{i}", limit=3, lease_seconds=30):
                got.extend(r.run_id for r in batch)
            return got

        results = await asyncio.gather(*(claimer(i) for i in range(4)))
    finally:
        for engine in engines:
            await engine.dispose()
    claimed = [run_id for got in results for run_id in got]
    assert sorted(claimed) == sorted(ids)  # each once, none lost
    assert set((await statuses(db)).values()) == {"running"}


async def test_a_lost_lease_is_fenced(db: Database, env_id: str, project_id: str) -> None:
    (run_id,) = await queue_runs(db, env_id, project_id, 1)
    clock = Clock()
    queue = RunQueue(db, clock=clock)
    (old,) = await queue.claim("w1", lease_seconds=10)
    assert await queue.heartbeat(run_id, old.fence, 10)
    clock.advance(5)
    assert await queue.sweep() == []  # the lease holds
    clock.advance(11)  # w1 stalls: no heartbeat
    assert await queue.sweep() == [(run_id, "queued")]
    swept = await queue.get(run_id)
    assert swept is not None and swept.retry_attempt == 1 and swept.lease_owner is None
    assert swept.error["message"].startswith("The run's worker stopped")
    (new,) = await queue.claim("w2", lease_seconds=10)
    assert new.fence == old.fence + 1 and new.attempt == 2
    # the stalled holder wakes up: every write it tries is refused
    assert not await queue.heartbeat(run_id, old.fence, 10)
    assert not await queue.complete(run_id, old.fence, {"$ok": "late"})
    assert await queue.fail(run_id, old.fence, ERROR, retry=True) is None
    assert not await queue.cancelled(run_id, old.fence)
    assert await queue.complete(run_id, new.fence, {"$ok": 3})
    assert not await queue.complete(run_id, new.fence, {"$ok": 4})  # written once
    done = await queue.get(run_id)
    assert done is not None
    assert (done.status, done.result, done.lease_owner) == ("succeeded", {"$ok": 3}, None)
    assert done.stopped_at is not None


async def test_retries_never_exceed_max_attempts(
    db: Database, env_id: str, project_id: str
) -> None:
    (run_id,) = await queue_runs(db, env_id, project_id, 1, max_attempts=3)
    clock = Clock()
    queue = RunQueue(db, clock=clock, backoff_base=2)
    (run,) = await queue.claim("w", lease_seconds=10)
    assert await queue.fail(run_id, run.fence, ERROR, retry=True) == "queued"
    retry = await queue.get(run_id)
    assert retry is not None and retry.next_retry_at == clock.now + timedelta(seconds=2)
    assert await queue.claim("w") == []  # waits its backoff
    clock.advance(2)
    (run,) = await queue.claim("w", lease_seconds=10)
    assert run.attempt == 2
    clock.advance(11)  # its worker dies: the lost lease counts as an attempt
    assert await queue.sweep() == [(run_id, "queued")]
    (run,) = await queue.claim("w", lease_seconds=10)
    assert run.attempt == 3
    assert await queue.fail(run_id, run.fence, ERROR, retry=True) == "failed"
    clock.advance(3600)
    assert await queue.claim("w") == []
    final = await queue.get(run_id)
    assert final is not None and (final.status, final.attempt, final.error) == ("failed", 3, ERROR)

    # out of attempts when the lease expires: failed, not queued again
    (other,) = await queue_runs(db, env_id, project_id, 1, max_attempts=1, start=clock.now)
    (run,) = await queue.claim("w", lease_seconds=1)
    clock.advance(2)
    assert await queue.sweep() == [(other, "failed")]
    assert not await queue.complete(other, run.fence, None)
    swept = await queue.get(other)
    assert swept is not None and swept.result == {
        "$err": {"type": "LeaseExpired", "message": swept.error["message"]}
    }


async def test_a_cancelled_queued_run_is_never_claimed(
    db: Database, env_id: str, project_id: str
) -> None:
    queued, retrying, running = await queue_runs(db, env_id, project_id, 3)
    clock = Clock()
    queue = RunQueue(db, clock=clock)
    seen: list[str] = []
    queue.on_cancel(seen.append)
    claimed = await queue.claim("w", limit=2, lease_seconds=10)
    assert [r.run_id for r in claimed] == [queued, retrying]
    await queue.fail(retrying, claimed[1].fence, ERROR, retry=True)  # waits for its retry
    # put the first back in the queue by letting its lease lapse (the second is queued)
    clock.advance(11)
    await queue.sweep()
    assert (await queue.cancel(env_id, queued)).status == "cancelled"
    assert (await queue.cancel(env_id, retrying)).status == "cancelled"
    (run,) = await queue.claim("w", limit=10, lease_seconds=10)
    assert run.run_id == running
    clock.advance(3600)
    assert await queue.claim("w", limit=10) == []
    # a running run is asked to stop; its worker acknowledges
    flagged = await queue.cancel(env_id, running)
    assert flagged.status == "running" and flagged.cancel_requested and seen == [running]
    assert await queue.cancel_requested([running, queued]) == {running}
    assert await queue.fail(running, run.fence, ERROR, retry=True) == "failed"  # no retry
    assert (await queue.cancel(env_id, running)).status == "failed"  # finished: unchanged
    with pytest.raises(RunNotFound):
        await queue.cancel(env_id, "00000000-0000-0000-0000-000000000000")
    async with db.write() as conn:
        other = (await environments.create(conn, "other")).id
    with pytest.raises(RunNotFound):
        await queue.cancel(other, queued)


async def test_cancel_then_lease_expiry_ends_cancelled(
    db: Database, env_id: str, project_id: str
) -> None:
    (run_id,) = await queue_runs(db, env_id, project_id, 1)
    clock = Clock()
    queue = RunQueue(db, clock=clock)
    (run,) = await queue.claim("w", lease_seconds=5)
    await queue.cancel(env_id, run_id)
    clock.advance(6)
    assert await queue.sweep() == [(run_id, "cancelled")]
    (again,) = await queue_runs(db, env_id, project_id, 1, start=clock.now)
    (run,) = await queue.claim("w", lease_seconds=5)
    await queue.cancel(env_id, again)
    assert await queue.cancelled(again, run.fence)
    assert (await statuses(db))[again] == "cancelled"


async def test_max_concurrent_runs_is_respected(
    db: Database, env_id: str, project_id: str, database_url: str
) -> None:
    await set_max_concurrent(db, env_id, 3)
    ids = await queue_runs(db, env_id, project_id, 10)
    async with db.write() as conn:
        other_env = (await environments.create(conn, "other")).id
    other_project = (await ProjectService(db).create(other_env, "p")).project_id
    other_ids = await queue_runs(db, other_env, other_project, 2, start=utcnow())
    engines = [Database(database_url) for _ in range(3)]
    try:
        queues = [RunQueue(e) for e in engines]
        batches = await asyncio.gather(
            *(q.claim(f"w{i}", limit=10, lease_seconds=30) for i, q in enumerate(queues))
        )
    finally:
        for engine in engines:
            await engine.dispose()
    claimed = [r for batch in batches for r in batch]
    by_env = Counter(r.env_id for r in claimed)
    # the default environment's oldest runs are over its limit: the other's still start
    assert by_env == {env_id: 3, other_env: 2}
    queue = RunQueue(db)
    assert await queue.claim("w", limit=10) == []
    first = next(r for r in claimed if r.env_id == env_id)
    assert await queue.complete(first.run_id, first.fence, None)
    (next_run,) = await queue.claim("w", limit=10)
    assert next_run.env_id == env_id
    # an override (None: no limit)
    more = await queue.claim("w", limit=10, env_limits={env_id: None})
    assert len(more) == 10 - 3 - 1
    current = await statuses(db)
    assert sum(current[i] == "queued" for i in ids) == 0
    assert all(current[i] == "running" for i in other_ids)


async def test_wake_ups(db: Database, env_id: str, project_id: str, database_url: str) -> None:
    queue = RunQueue(db)
    assert await queue.wait_for_work(0.05) is False
    queue.notify()
    assert await queue.wait_for_work(5) is True  # a notification before the wait is kept
    if db.is_sqlite:
        return
    # another process's publish wakes a listening worker (PostgreSQL LISTEN/NOTIFY)
    await queue.start()
    try:
        await asyncio.sleep(0.3)
        await queue.wait_for_work(0.01)  # the listener's own start-up wake-up
        publisher = Database(database_url)
        try:
            await queue_runs(publisher, env_id, project_id, 1)
        finally:
            await publisher.dispose()
        assert await queue.wait_for_work(5) is True
    finally:
        await queue.close()


@pytest.mark.timeout(300)
async def test_500_runs_drained_by_4_claimers(
    db: Database, env_id: str, project_id: str, database_url: str
) -> None:
    """Every run reaches exactly one terminal state: handlers succeed, fail (some retried),
    or stall past their lease; a sweeper takes stalled runs back; late writes are refused."""
    await set_max_concurrent(db, env_id, 1000)
    ids = set(await queue_runs(db, env_id, project_id, 500, max_attempts=3))
    engines = [Database(database_url) for _ in range(4)] if not db.is_sqlite else [db] * 4
    terminal_writes: Counter[str] = Counter()
    refused = 0
    rng = random.Random(7)
    stop = asyncio.Event()

    async def worker(i: int) -> None:
        nonlocal refused
        queue = RunQueue(engines[i], backoff_base=0)
        while not stop.is_set():
            batch = await queue.claim(f"w{i}", limit=8, lease_seconds=0.3)
            if not batch:
                await queue.wait_for_work(0.05)
                continue
            for run in batch:
                roll = rng.random()
                if roll < 0.05:  # stalls past its lease, then tries to finish anyway
                    await asyncio.sleep(0.4)
                    if await queue.complete(run.run_id, run.fence, {"$ok": "late"}):
                        terminal_writes[run.run_id] += 1
                    else:
                        refused += 1
                elif roll < 0.35:
                    status = await queue.fail(run.run_id, run.fence, ERROR, retry=True)
                    if status == "failed":
                        terminal_writes[run.run_id] += 1
                elif await queue.complete(run.run_id, run.fence, {"$ok": run.input["args"][0]}):
                    terminal_writes[run.run_id] += 1

    async def sweeper() -> None:
        queue = RunQueue(db)
        while not stop.is_set():
            for run_id, status in await queue.sweep():
                if status in TERMINAL:
                    terminal_writes[run_id] += 1
            await asyncio.sleep(0.1)

    async def watch() -> None:
        while True:
            current = await statuses(db)
            if all(s in TERMINAL for s in current.values()):
                stop.set()
                return
            await asyncio.sleep(0.2)

    try:
        await asyncio.wait_for(
            asyncio.gather(*(worker(i) for i in range(4)), sweeper(), watch()), 240
        )
    finally:
        if not db.is_sqlite:
            for engine in engines:
                await engine.dispose()
    async with db.read() as conn:
        rows = (await conn.execute(sa.select(runs))).mappings().all()
    assert {r["run_id"] for r in rows} == ids
    assert all(r["status"] in TERMINAL and r["attempt"] <= 3 for r in rows)
    assert set(terminal_writes) == ids and set(terminal_writes.values()) == {1}
    final = Counter(r["status"] for r in rows)
    assert final["succeeded"] > 300 and final["failed"] > 0
    assert refused > 0  # late finishers did happen, and were refused
    assert all(r["lease_owner"] is None for r in rows)


async def test_publish_then_claim(db: Database, env_id: str, project_id: str) -> None:
    """An event's runs go through the same queue (one per handler)."""
    async with db.write() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO builds (build_id, env_id, project_id, hash, size, build_type, "
                "blob_key, storage_backend, deployed, live, active, manifest, created_at, "
                "updated_at) VALUES ('b1', :env, :project, 'h', 1, 'bundle', 'k', 'local', "
                ":t, :f, :t, '{}', :now, :now)"
            ),
            {"env": env_id, "project": project_id, "t": True, "f": False, "now": utcnow()},
        )
        await conn.execute(
            sa.text(
                "INSERT INTO event_handlers (event_handler_id, env_id, project_id, build_id, "
                "event_type, ns, var, function, created_at) VALUES ('h1', :env, :project, 'b1',"
                " 'user.signup', '::hello::tasks', 'run', 'hello.tasks:run', :now)"
            ),
            {"env": env_id, "project": project_id, "now": utcnow()},
        )
        published = await publish(conn, env_id, "user.signup", {"id": 1})
    queue = RunQueue(db)
    claimed: list[Run] = await queue.claim("w", limit=5)
    assert [r.run_id for r in claimed] == [r.run_id for r in published.runs]
    assert claimed[0].input["event_data"] == {"id": 1}
