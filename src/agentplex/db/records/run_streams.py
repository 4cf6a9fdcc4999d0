"""Queries behind a run stream's end (whether every run of an event is finished), and behind
the bound on chains of events published by handlers (`origin_of`).

Workers finishing the last two runs of one event at once (on PostgreSQL) must not both see the
other's run as unfinished, or the stream would never end: each locks the events' rows (in id
order, so they never deadlock) before it looks, so the second looks after the first
committed. SQLite's writers are serialised anyway.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from agentplex.db.tables import events, runs

_FINISHED = ("succeeded", "failed", "cancelled")


async def lock_events(conn: AsyncConnection, event_ids: Collection[str]) -> None:
    """Hold these events' rows until the transaction ends (PostgreSQL)."""
    if event_ids and conn.dialect.name == "postgresql":
        query = (
            select(events.c.event_id)
            .where(events.c.event_id.in_(sorted(event_ids)))
            .order_by(events.c.event_id)
            .with_for_update()
        )
        await conn.execute(query)


async def unfinished_events(conn: AsyncConnection, event_ids: Collection[str]) -> set[str]:
    """Which of these events still have a run that is not finished."""
    if not event_ids:
        return set()
    query = (
        select(runs.c.event_id)
        .where(runs.c.event_id.in_(list(event_ids)), runs.c.status.not_in(_FINISHED))
        .group_by(runs.c.event_id)
    )
    return {str(e) for e in (await conn.execute(query)).scalars()}


async def origin_of(conn: AsyncConnection, run_id: str) -> str | None:
    """The run whose handler published the event that started ``run_id``, if one did."""
    query = (
        select(events.c.origin_run_id)
        .select_from(runs.join(events, events.c.event_id == runs.c.event_id))
        .where(runs.c.run_id == run_id)
    )
    value = (await conn.execute(query)).scalar()
    return str(value) if value else None
