"""Queries of runs: the durable queue's claims, leases and terminal writes, and reads.

Every write of a run's holder is guarded by ``fence = :fence AND status = 'running'``: the fence
goes up at each claim, so a holder whose lease expired (and whose run was swept or claimed
again) writes nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from agentplex.db.tables import environments, projects, runs

Row = dict[str, Any]

NOTIFY_CHANNEL = "agentplex_runs"
_WITH_PROJECT_NAME = (runs, projects.c.name.label("project_name"))


def _is_pg(conn: AsyncConnection) -> bool:
    return conn.dialect.name == "postgresql"


async def insert(conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        await conn.execute(runs.insert(), [dict(r) for r in rows])


async def notify(conn: AsyncConnection, payload: str = "") -> None:
    """Tell listening workers (other processes) that runs were queued: PostgreSQL delivers the
    notification when the transaction commits. Nothing on SQLite."""
    if _is_pg(conn):
        await conn.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {"channel": NOTIFY_CHANNEL, "payload": payload},
        )


async def get(conn: AsyncConnection, run_id: str, env_id: str | None = None) -> Row | None:
    """The run ``run_id`` (in ``env_id`` when given), with its project's name."""
    query = (
        select(*_WITH_PROJECT_NAME)
        .join(projects, projects.c.project_id == runs.c.project_id)
        .where(runs.c.run_id == run_id)
    )
    if env_id is not None:
        query = query.where(runs.c.env_id == env_id)
    row = (await conn.execute(query)).first()
    return dict(row._mapping) if row else None


async def by_event(conn: AsyncConnection, env_id: str, event_id: str) -> list[Row]:
    """The runs an event started, oldest first."""
    query = (
        select(*_WITH_PROJECT_NAME)
        .join(projects, projects.c.project_id == runs.c.project_id)
        .where(runs.c.env_id == env_id, runs.c.event_id == event_id)
        .order_by(runs.c.created_at, runs.c.run_id)
    )
    return [dict(r._mapping) for r in await conn.execute(query)]


async def count_by_status(conn: AsyncConnection, env_id: str) -> dict[str, int]:
    """How many of the environment's runs are in each status."""
    query = (
        select(runs.c.status, func.count()).where(runs.c.env_id == env_id).group_by(runs.c.status)
    )
    return {str(status): int(n) for status, n in await conn.execute(query)}


# -- claiming ----------------------------------------------------------------------------------


async def capacity(
    conn: AsyncConnection, env_ids: Collection[str] | None = None, *, lock: bool = False
) -> dict[str, tuple[int, int | None]]:
    """(running runs, ``max_concurrent_runs``) per environment, in one statement: of every
    environment with a running run, or of ``env_ids``. ``lock`` (PostgreSQL, with
    ``env_ids``) holds those environments' rows until the transaction ends, taken in id
    order so claimers never deadlock, and counts after the lock is granted. An environment
    with no row has no limit (None)."""
    if env_ids is None:
        query = (
            select(runs.c.env_id, func.count(), environments.c.max_concurrent_runs)
            .select_from(runs.outerjoin(environments, environments.c.id == runs.c.env_id))
            .where(runs.c.status == "running")
            .group_by(runs.c.env_id, environments.c.max_concurrent_runs)
        )
        return {
            str(e): (int(n), None if cap is None else int(cap))
            for e, n, cap in await conn.execute(query)
        }
    if not env_ids:
        return {}
    wanted = sorted(env_ids)
    limits = (
        select(environments.c.id, environments.c.max_concurrent_runs)
        .where(environments.c.id.in_(wanted))
        .order_by(environments.c.id)
    )
    if lock and _is_pg(conn):
        # locks the rows and reads the limits; the count comes in its own statement, whose
        # snapshot is taken once the locks were granted
        limits = limits.with_for_update()
    caps = {str(e): int(cap) for e, cap in await conn.execute(limits)}
    counts = (
        select(runs.c.env_id, func.count())
        .where(runs.c.status == "running", runs.c.env_id.in_(wanted))
        .group_by(runs.c.env_id)
    )
    running = {str(e): int(n) for e, n in await conn.execute(counts)}
    return {e: (running.get(e, 0), caps.get(e)) for e in wanted}


async def lock_environments(conn: AsyncConnection, env_ids: Collection[str]) -> None:
    """Hold these environments' rows until the transaction ends (PostgreSQL; SQLite's writers
    are serialised anyway), so that two claimers count an environment's running runs one
    after the other. Locked in id order: claimers never deadlock."""
    if env_ids and _is_pg(conn):
        query = (
            select(environments.c.id)
            .where(environments.c.id.in_(sorted(env_ids)))
            .order_by(environments.c.id)
            .with_for_update()
        )
        await conn.execute(query)


async def candidates(
    conn: AsyncConnection,
    now: datetime,
    limit: int,
    exclude_envs: Collection[str],
    exclude_projects: Collection[str] = (),
) -> list[tuple[str, str, str]]:
    """Up to ``limit`` (run_id, env_id, project_id) of runs due to start, oldest due first,
    outside the excluded environments and projects. On PostgreSQL the rows are locked and
    rows another transaction holds are skipped (``FOR UPDATE SKIP LOCKED``)."""
    query = select(runs.c.run_id, runs.c.env_id, runs.c.project_id).where(
        runs.c.status == "queued", runs.c.available_at <= now
    )
    if exclude_envs:
        query = query.where(runs.c.env_id.not_in(list(exclude_envs)))
    if exclude_projects:
        query = query.where(runs.c.project_id.not_in(list(exclude_projects)))
    query = query.order_by(runs.c.available_at, runs.c.created_at, runs.c.run_id).limit(limit)
    if _is_pg(conn):
        query = query.with_for_update(skip_locked=True)
    return [(str(r), str(e), str(p)) for r, e, p in await conn.execute(query)]


async def mark_claimed(
    conn: AsyncConnection,
    run_ids: Sequence[str],
    worker_id: str,
    now: datetime,
    lease_expires_at: datetime,
) -> list[Row]:
    """Make these queued runs running under ``worker_id``'s lease, their fence one higher;
    the rows as they are now."""
    if not run_ids:
        return []
    query = (
        update(runs)
        .where(runs.c.run_id.in_(list(run_ids)), runs.c.status == "queued")
        .values(
            status="running",
            lease_owner=worker_id,
            lease_expires_at=lease_expires_at,
            heartbeat_at=now,
            started_at=now,
            next_retry_at=None,
            fence=runs.c.fence + 1,
            attempt=runs.c.attempt + 1,
        )
        .returning(*runs.c)
    )
    return [dict(r._mapping) for r in await conn.execute(query)]


async def next_available(conn: AsyncConnection) -> datetime | None:
    """When the earliest queued run becomes due."""
    query = select(func.min(runs.c.available_at)).where(runs.c.status == "queued")
    value = (await conn.execute(query)).scalar()
    return value if isinstance(value, datetime) else None


# -- the holder's writes (fenced) -----------------------------------------------------------


def _held(run_id: str, fence: int) -> list[Any]:
    return [runs.c.run_id == run_id, runs.c.fence == fence, runs.c.status == "running"]


async def get_held(conn: AsyncConnection, run_id: str, fence: int) -> Row | None:
    """The run if ``fence`` still holds it (locked until the transaction ends, on PostgreSQL)."""
    query = select(runs).where(*_held(run_id, fence))
    if _is_pg(conn):
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    return dict(row._mapping) if row else None


# built once: the SET clause comes from the parameters' keys (the columns' names), and a
# statement object reused is compiled and cache-keyed once, not at each run's write
_UPDATE_HELD = update(runs).where(
    runs.c.run_id == bindparam("held_run_id"),
    runs.c.fence == bindparam("held_fence"),
    runs.c.status == "running",
)


async def update_held(
    conn: AsyncConnection, run_id: str, fence: int, values: Mapping[str, Any]
) -> bool:
    """Write ``values`` (plain values of columns) if ``fence`` still holds the run; False
    (nothing written) otherwise."""
    params = {**values, "held_run_id": run_id, "held_fence": fence}
    return bool((await conn.execute(_UPDATE_HELD, params)).rowcount)


# -- cancel and sweep -----------------------------------------------------------------------


async def cancel_queued(conn: AsyncConnection, env_id: str, run_id: str, now: datetime) -> bool:
    """Cancel the run if it is still queued."""
    query = (
        update(runs)
        .where(runs.c.run_id == run_id, runs.c.env_id == env_id, runs.c.status == "queued")
        .values(status="cancelled", stopped_at=now, next_retry_at=None)
    )
    return bool((await conn.execute(query)).rowcount)


async def request_cancel(conn: AsyncConnection, env_id: str, run_id: str) -> bool:
    """Flag a running run for its worker to stop."""
    query = (
        update(runs)
        .where(runs.c.run_id == run_id, runs.c.env_id == env_id, runs.c.status == "running")
        .values(cancel_requested=True)
    )
    return bool((await conn.execute(query)).rowcount)


async def cancel_requested(conn: AsyncConnection, run_ids: Collection[str]) -> set[str]:
    """Which of these running runs were asked to stop."""
    if not run_ids:
        return set()
    query = select(runs.c.run_id).where(
        runs.c.run_id.in_(list(run_ids)),
        runs.c.status == "running",
        runs.c.cancel_requested.is_(True),
    )
    return {str(r) for r in (await conn.execute(query)).scalars()}


async def sweep_expired(
    conn: AsyncConnection, now: datetime, error: Mapping[str, Any]
) -> list[tuple[str, str]]:
    """Runs whose lease expired: cancelled if cancel was asked, failed when out of attempts,
    queued again (due at once, ahead of runs queued after it) otherwise. A run ended here gets
    ``error`` and Hot's ``{"$err": {type, message}}`` result. (run_id, new status) of each."""
    ended = {"$err": {"type": error.get("type", "Error"), "message": error.get("message", "")}}
    expired = [
        runs.c.status == "running",
        runs.c.lease_expires_at.is_not(None),
        runs.c.lease_expires_at < now,
    ]
    released = {
        "lease_owner": None,
        "lease_expires_at": None,
        "heartbeat_at": None,
        "error": dict(error),
    }
    swept: list[tuple[str, str]] = []
    steps: list[tuple[list[Any], dict[str, Any]]] = [
        (
            [runs.c.cancel_requested.is_(True)],
            {"status": "cancelled", "stopped_at": now, "result": ended},
        ),
        (
            [runs.c.attempt >= runs.c.max_attempts],
            {"status": "failed", "stopped_at": now, "result": ended},
        ),
        (
            [],
            {
                # available_at stays (it is past): a run taken back goes before later ones
                "status": "queued",
                "next_retry_at": now,
                "retry_attempt": runs.c.attempt,
            },
        ),
    ]
    for where, values in steps:
        query = (
            update(runs)
            .where(*expired, *where)
            .values(**released, **values)
            .returning(runs.c.run_id, runs.c.status)
        )
        swept.extend((str(r), str(s)) for r, s in await conn.execute(query))
    return swept


async def insert_once(conn: AsyncConnection, row: Mapping[str, Any]) -> bool:
    """Insert a run unless its environment has one with the same ``dedupe_key`` (a schedule's
    fire); False (nothing written) then."""
    dialect = postgresql if _is_pg(conn) else sqlite
    query = dialect.insert(runs).values(**row).on_conflict_do_nothing().returning(runs.c.run_id)
    # (rowcount is -1 after an INSERT on psycopg: what comes back says whether it wrote)
    return (await conn.execute(query)).first() is not None


async def end_unfinished_of_project(
    conn: AsyncConnection,
    env_id: str,
    project_id: str,
    now: datetime,
    error: Mapping[str, Any],
    result: Any,
) -> list[tuple[Row, str]]:
    """Cancel every queued or running run of the project at once (it is being deleted): each
    run afterwards, with the status it had."""
    unfinished = [
        runs.c.env_id == env_id,
        runs.c.project_id == project_id,
        runs.c.status.in_(("queued", "running")),
    ]
    before = {
        str(r.run_id): str(r.status)
        for r in await conn.execute(select(runs.c.run_id, runs.c.status).where(*unfinished))
    }
    if not before:
        return []
    await conn.execute(
        update(runs)
        .where(*unfinished, runs.c.run_id.in_(list(before)))
        .values(
            status="cancelled",
            stopped_at=now,
            error=dict(error),
            result=result,
            lease_owner=None,
            lease_expires_at=None,
        )
    )
    rows = await conn.execute(select(runs).where(runs.c.run_id.in_(list(before))))
    return [(dict(r._mapping), before[str(r.run_id)]) for r in rows]
