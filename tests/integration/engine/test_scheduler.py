"""The cron scheduler on real SQLite and PostgreSQL: each fire queued once with two schedulers
ticking at once and across a restart, the catch-up policy bounding what a long downtime
fires, the DST rule end to end, deploys, undeploys and deactivation stopping a schedule's
fires, and the loop firing within a second of the fire time and waking on notify()."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from agentplex.core import environments
from agentplex.core.clock import aware, new_id, utcnow
from agentplex.core.projects import ProjectService
from agentplex.db.engine import Database
from agentplex.db.records import builds as build_records
from agentplex.db.records import schedules as schedule_records
from agentplex.db.tables import builds, runs
from agentplex.engine.scheduler import Scheduler, dedupe_key

MINUTE = timedelta(minutes=1)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


async def deploy(
    db: Database,
    env_id: str,
    project_id: str,
    specs: Sequence[tuple[str, ...]],
    at: datetime,
    function: str = "hello.tasks:daily",
) -> tuple[str, list[str]]:
    """A new build of the project, deployed at ``at`` with these (cron, tz[, function])
    schedules in place of the previous deployed build's: (build_id, schedule_ids)."""
    build_id = new_id()
    async with db.write() as conn:
        await build_records.lock_project(conn, project_id)  # as BuildService.deploy does
        await build_records.insert(
            conn,
            {
                "build_id": build_id,
                "env_id": env_id,
                "project_id": project_id,
                "hash": "0" * 64,
                "size": 1,
                "build_type": "python",
                "blob_key": f"builds/{build_id}",
                "storage_backend": "local",
                "deployed": False,
                "live": False,
                "active": True,
                "manifest": {},
                "deployed_at": None,
                "created_at": at,
                "updated_at": at,
            },
        )
        rows: list[dict[str, Any]] = []
        for cron, tz, *fn in specs:
            module, name = (fn[0] if fn else function).split(":")
            rows.append(
                {
                    "schedule_id": new_id(),
                    "env_id": env_id,
                    "project_id": project_id,
                    "build_id": build_id,
                    "cron": cron,
                    "tz": tz,
                    "ns": "::" + module.replace(".", "::"),
                    "var": name,
                    "function": f"{module}:{name}",
                    "created_at": at,
                }
            )
        await build_records.set_flag(conn, project_id, build_id, "deployed", at)
        await build_records.replace_entry_points(conn, project_id, [], rows)
    return build_id, [r["schedule_id"] for r in rows]


async def schedule_runs(db: Database) -> list[dict[str, Any]]:
    async with db.read() as conn:
        query = sa.select(runs).where(runs.c.run_type == "schedule").order_by(runs.c.dedupe_key)
        return [dict(r._mapping) for r in await conn.execute(query)]


async def fire_times(db: Database, schedule_id: str | None = None) -> list[datetime]:
    """The fire times queued (of one schedule), oldest first."""
    out = []
    for run in await schedule_runs(db):
        if schedule_id is None or run["input"]["schedule_id"] == schedule_id:
            out.append(datetime.fromisoformat(run["input"]["fire_time"].replace("Z", "+00:00")))
    return sorted(out)


async def test_a_fire_is_a_queued_schedule_run(db: Database, env_id: str, project_id: str) -> None:
    t0 = utc(2026, 6, 1, 12)
    build_id, [sid] = await deploy(db, env_id, project_id, [("0 * * * *", "UTC")], t0)
    scheduler = Scheduler(db)
    assert await scheduler.tick(t0 + MINUTE) == []
    assert scheduler.next_wake == utc(2026, 6, 1, 13)
    [fire] = await scheduler.tick(utc(2026, 6, 1, 13, 0, 0, 300000))
    assert fire.fire_time == utc(2026, 6, 1, 13) and fire.schedule_id == sid
    [run] = await schedule_runs(db)
    assert run["run_id"] == fire.run_id and run["status"] == "queued"
    assert run["run_type"] == "schedule" and run["build_id"] == build_id
    assert run["project_id"] == project_id and run["env_id"] == env_id
    assert (run["ns"], run["var"], run["function"]) == (
        "::hello::tasks",
        "daily",
        "hello.tasks:daily",
    )
    assert (
        run["dedupe_key"] == fire.dedupe_key == dedupe_key({**run, **run["input"]}, fire.fire_time)
    )
    assert run["dedupe_key"].endswith(":2026-06-01T13:00:00.000Z")
    assert run["input"] == {
        "schedule_id": sid,
        "cron": "0 * * * *",
        "tz": "UTC",
        "fire_time": "2026-06-01T13:00:00.000Z",
    }
    assert scheduler.next_wake == utc(2026, 6, 1, 14)
    assert await scheduler.tick(utc(2026, 6, 1, 13, 0, 30)) == []  # the same fire: once


async def test_two_schedulers_ticking_at_once_queue_each_fire_once(
    database_url: str, db: Database, env_id: str, project_id: str
) -> None:
    t0 = utc(2026, 6, 1, 12)
    specs = [("* * * * *", "UTC"), ("*/2 * * * *", "Europe/Paris"), ("*/3 * * * *", "UTC")]
    _, ids = await deploy(db, env_id, project_id, specs, t0)
    other_db = Database(database_url)  # as another process would
    try:
        first, second = Scheduler(db), Scheduler(other_db)
        queued: list[str] = []
        for i in range(1, 31):
            now = t0 + i * MINUTE + timedelta(milliseconds=5)
            a, b = await asyncio.gather(first.tick(now), second.tick(now))
            queued += [f.dedupe_key for f in a + b]
            again = await asyncio.gather(first.tick(now), second.tick(now))
            assert not any(again)
    finally:
        await other_db.dispose()
    assert len(queued) == len(set(queued)) == 30 + 15 + 10
    keys = [r["dedupe_key"] for r in await schedule_runs(db)]
    assert Counter(keys) == Counter(queued)
    assert len(await fire_times(db, ids[0])) == 30


async def test_a_restart_neither_misses_nor_doubles_a_fire(
    db: Database, env_id: str, project_id: str
) -> None:
    t0 = utc(2026, 6, 1, 12)
    _, [sid] = await deploy(db, env_id, project_id, [("* * * * *", "UTC")], t0)
    before = Scheduler(db)
    for i in range(1, 6):
        assert len(await before.tick(t0 + i * MINUTE + timedelta(milliseconds=200))) == 1
    # the process dies right after queueing 12:05; a new one starts at 12:05:20
    after = Scheduler(db)
    assert await after.tick(t0 + 5 * MINUTE + timedelta(seconds=20)) == []
    # it dies again before 12:06 is queued and the next one starts 40 s later: still on time
    again = Scheduler(db)
    [fire] = await again.tick(t0 + 6 * MINUTE + timedelta(seconds=40))
    assert fire.fire_time == t0 + 6 * MINUTE
    [fire] = await again.tick(t0 + 7 * MINUTE)
    assert await fire_times(db, sid) == [t0 + i * MINUTE for i in range(1, 8)]


@pytest.mark.parametrize(
    ("catch_up", "expected"),
    [
        ("latest", [timedelta(days=7, minutes=-1)]),
        ("none", []),
        ("all", [timedelta(days=7, minutes=-i) for i in (5, 4, 3, 2, 1)]),
    ],
)
async def test_the_catch_up_policy_bounds_a_long_downtime(
    db: Database, env_id: str, project_id: str, catch_up: Any, expected: list[timedelta]
) -> None:
    t0 = utc(2026, 6, 1, 12)
    _, [sid] = await deploy(db, env_id, project_id, [("* * * * *", "UTC")], t0)
    scheduler = Scheduler(db, catch_up=catch_up, max_catch_up=5, misfire_grace=10.0)
    # down for a week (10,080 fires missed); back 30 s after a fire (missed: the grace is
    # 10 s), 30 s before the next
    back = t0 + timedelta(days=7, seconds=-30)
    started = time.perf_counter()
    fired = await scheduler.tick(back)
    assert time.perf_counter() - started < 2.0  # bounded work, not a week of fire times
    assert [f.fire_time for f in fired] == [t0 + d for d in expected]
    assert await scheduler.tick(back + timedelta(seconds=1)) == []  # decided once
    # the next fire runs on time, whatever the policy
    [fire] = await scheduler.tick(t0 + timedelta(days=7, milliseconds=100))
    assert fire.fire_time == t0 + timedelta(days=7)
    assert len(await fire_times(db, sid)) == len(expected) + 1


async def test_latest_runs_only_an_on_time_fire_after_a_downtime(
    db: Database, env_id: str, project_id: str
) -> None:
    t0 = utc(2026, 6, 1, 12)
    _, [daily, hourly] = await deploy(
        db, env_id, project_id, [("0 9 * * *", "Europe/Paris"), ("0 * * * *", "UTC")], t0
    )
    # down a week, back 20 s after today's 09:00 Paris (07:00Z)
    back = utc(2026, 6, 8, 7, 0, 20)
    fired = await Scheduler(db).tick(back)
    assert sorted((f.schedule_id, f.fire_time) for f in fired) == sorted(
        [(daily, utc(2026, 6, 8, 7)), (hourly, utc(2026, 6, 8, 7))]
    )


@pytest.mark.parametrize(
    ("tz", "cron", "start", "end", "expected"),
    [
        # Paris springs forward on 2026-03-29 at 01:00Z: 02:30 fires once, at 03:00 CEST
        (
            "Europe/Paris",
            "30 2 * * *",
            utc(2026, 3, 28, 23),
            utc(2026, 3, 29, 3),
            [utc(2026, 3, 29, 1)],
        ),
        # New York falls back on 2026-11-01 at 06:00Z: 01:30 fires once, at 01:30 EDT
        (
            "America/New_York",
            "30 1 * * *",
            utc(2026, 11, 1, 4),
            utc(2026, 11, 1, 8),
            [utc(2026, 11, 1, 5, 30)],
        ),
        # Paris falls back on 2026-10-25 at 01:00Z: 02:30 fires once, at 02:30 CEST
        (
            "Europe/Paris",
            "30 2 * * *",
            utc(2026, 10, 24, 23),
            utc(2026, 10, 25, 3),
            [utc(2026, 10, 25, 0, 30)],
        ),
        # New York springs forward on 2026-03-08 at 07:00Z: 02:30 fires once, at 03:00 EDT
        (
            "America/New_York",
            "30 2 * * *",
            utc(2026, 3, 8, 5),
            utc(2026, 3, 8, 9),
            [utc(2026, 3, 8, 7)],
        ),
    ],
)
async def test_dst_changes_fire_once(
    db: Database,
    env_id: str,
    project_id: str,
    tz: str,
    cron: str,
    start: datetime,
    end: datetime,
    expected: list[datetime],
) -> None:
    await deploy(db, env_id, project_id, [(cron, tz)], start - timedelta(days=1))
    scheduler = Scheduler(db, catch_up="none", misfire_grace=1.0)
    now = start
    late: list[float] = []
    while now < end:  # tick every 5 minutes and at each announced fire, as the loop does
        for fire in await scheduler.tick(now):
            late.append((now - fire.fire_time).total_seconds())
        wake = scheduler.next_wake
        now = min(now + 5 * MINUTE, wake) if wake is not None and wake > now else now + 5 * MINUTE
    assert await fire_times(db) == expected
    assert late == [0.0]  # fired at its instant (catch_up none: nothing came from catch-up)


async def test_replaced_and_undeployed_builds_stop_firing(
    db: Database, env_id: str, project_id: str
) -> None:
    t0 = utc(2026, 6, 1, 12)
    old_build, [old] = await deploy(db, env_id, project_id, [("* * * * *", "UTC")], t0)
    scheduler = Scheduler(db)
    assert len(await scheduler.tick(t0 + MINUTE)) == 1
    # a redeploy keeping the schedule, whose clock read 12:00:59 but which committed after
    # 12:01 was queued: the new row does not queue 12:01 again
    new_build, [new] = await deploy(
        db, env_id, project_id, [("* * * * *", "UTC")], t0 + MINUTE - timedelta(seconds=1)
    )
    assert await scheduler.tick(t0 + MINUTE + timedelta(milliseconds=500)) == []
    [fire] = await scheduler.tick(t0 + 2 * MINUTE)
    assert (fire.schedule_id, fire.build_id) == (new, new_build)
    assert await fire_times(db, old) == [t0 + MINUTE]
    # undeployed (no build of the project deployed): nothing fires
    async with db.write() as conn:
        await conn.execute(sa.update(builds).values(deployed=False))
    assert await scheduler.tick(t0 + 3 * MINUTE) == []
    assert scheduler.next_wake is None
    assert old_build != new_build


async def test_a_fire_never_runs_a_build_replaced_while_it_was_being_queued(
    db: Database, env_id: str, project_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    t0 = utc(2026, 6, 1, 12)
    await deploy(db, env_id, project_id, [("* * * * *", "UTC")], t0)
    async with db.read() as conn:
        stale = await schedule_records.firing(conn)

    async def firing(conn: Any) -> list[dict[str, Any]]:
        return stale  # read before the deploy below committed

    _, [new] = await deploy(db, env_id, project_id, [("* * * * *", "UTC")], t0 + MINUTE / 2)
    monkeypatch.setattr(schedule_records, "firing", firing)
    assert await Scheduler(db).tick(t0 + MINUTE) == []
    monkeypatch.undo()
    [fire] = await Scheduler(db).tick(t0 + MINUTE)
    assert fire.schedule_id == new


async def test_a_deactivated_projects_schedules_do_not_fire(
    db: Database, env_id: str, project_id: str
) -> None:
    t0 = utc(2026, 6, 1, 12)
    other = (await ProjectService(db).create(env_id, "other")).project_id
    _, [mine] = await deploy(db, env_id, project_id, [("* * * * *", "UTC")], t0)
    _, [theirs] = await deploy(db, env_id, other, [("* * * * *", "UTC")], t0)
    await ProjectService(db).deactivate(env_id, "hello")
    scheduler = Scheduler(db)
    for i in range(1, 5):
        fired = await scheduler.tick(t0 + i * MINUTE)
        assert [f.schedule_id for f in fired] == [theirs]
    await ProjectService(db).activate(env_id, "hello")
    # back at 12:05: what it missed while inactive follows the catch-up policy (latest: the
    # on-time 12:05 only)
    fired = await scheduler.tick(t0 + 5 * MINUTE + timedelta(milliseconds=100))
    assert sorted((f.schedule_id, f.fire_time) for f in fired) == sorted(
        [(mine, t0 + 5 * MINUTE), (theirs, t0 + 5 * MINUTE)]
    )


async def test_the_loop_fires_within_a_second_and_wakes_on_notify(
    db: Database, env_id: str, project_id: str
) -> None:
    woken: list[int] = []
    scheduler = Scheduler(db, max_sleep=60.0, on_enqueued=lambda: woken.append(1))
    stop = asyncio.Event()
    loop = asyncio.create_task(scheduler.run(stop))
    try:
        await asyncio.sleep(0.3)  # nothing deployed: the loop sleeps up to a minute
        deployed_at = utcnow()
        _, [sid] = await deploy(db, env_id, project_id, [("* * * * * *", "UTC")], deployed_at)
        scheduler.notify()  # the deploy tells it
        await asyncio.sleep(2.6)
    finally:
        stop.set()
        await asyncio.wait_for(loop, 5)
    queued = await schedule_runs(db)
    assert len(queued) >= 2 and woken
    for run in queued:
        fire = datetime.fromisoformat(run["input"]["fire_time"].replace("Z", "+00:00"))
        assert fire > deployed_at
        assert timedelta(0) <= aware(run["created_at"]) - fire < timedelta(seconds=1)
    assert len({r["dedupe_key"] for r in queued}) == len(queued)
    assert {r["input"]["schedule_id"] for r in queued} == {sid}


async def test_every_environments_schedules_fire(
    db: Database, env_id: str, project_id: str
) -> None:
    async with db.write() as conn:
        staging = (await environments.create(conn, "staging")).id
    other = (await ProjectService(db).create(staging, "hello")).project_id
    t0 = utc(2026, 6, 1, 12)
    _, [prod_schedule] = await deploy(db, env_id, project_id, [("* * * * *", "UTC")], t0)
    _, [staging_schedule] = await deploy(db, staging, other, [("* * * * *", "UTC")], t0)
    fired = await Scheduler(db).tick(t0 + MINUTE)
    assert sorted((f.env_id, f.schedule_id) for f in fired) == sorted(
        [(env_id, prod_schedule), (staging, staging_schedule)]
    )


async def test_deploys_racing_ticks_neither_deadlock_nor_double_a_fire(
    db: Database, env_id: str, project_id: str
) -> None:
    t0 = utc(2026, 6, 1, 12)
    functions = ["hello.tasks:a", "hello.tasks:b", "hello.tasks:c"]

    async def redeploy(at: datetime) -> None:
        await deploy(db, env_id, project_id, [("* * * * * *", "UTC", f) for f in functions], at)

    await redeploy(t0)
    scheduler = Scheduler(db)
    for i in range(1, 41):
        now = t0 + timedelta(seconds=i)
        await asyncio.gather(redeploy(now - timedelta(milliseconds=500)), scheduler.tick(now))
    await scheduler.tick(t0 + timedelta(seconds=41))
    fired = Counter((r["function"], r["input"]["fire_time"]) for r in await schedule_runs(db))
    # each schedule's fire times queued once, whichever deployed row (build) queued them
    assert set(fired.values()) == {1}
    last = {f: max(t for g, t in fired if g == f) for f in functions}
    assert all(t >= "2026-06-01T12:00:40" for t in last.values())
