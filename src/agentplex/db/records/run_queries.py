"""Read queries of runs and events for the API: lists with filters, live counts, a stream's
owner."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from agentplex.db.tables import events, projects, runs

Row = dict[str, Any]


async def page_runs(
    conn: AsyncConnection,
    env_id: str,
    *,
    statuses: Collection[str] = (),
    run_types: Collection[str] = (),
    since: datetime | None = None,
    project_id: str | None = None,
    limit: int,
    offset: int,
) -> tuple[list[Row], int]:
    """Newest first: a page of the environment's runs (with ``project_name``) that match every
    filter given, and how many match in all."""
    where: list[Any] = [runs.c.env_id == env_id]
    if statuses:
        where.append(runs.c.status.in_(list(statuses)))
    if run_types:
        where.append(runs.c.run_type.in_(list(run_types)))
    if since is not None:
        where.append(runs.c.created_at >= since)
    if project_id is not None:
        where.append(runs.c.project_id == project_id)
    total = (await conn.execute(select(func.count()).select_from(runs).where(*where))).scalar()
    query = (
        select(runs, projects.c.name.label("project_name"))
        .join(projects, projects.c.project_id == runs.c.project_id)
        .where(*where)
        .order_by(runs.c.created_at.desc(), runs.c.run_id.desc())
        .limit(limit)
        .offset(offset)
    )
    return [dict(r._mapping) for r in await conn.execute(query)], int(total or 0)


async def count_running(conn: AsyncConnection, env_id: str) -> dict[str, int]:
    """How many of the environment's runs are running and queued right now."""
    query = (
        select(runs.c.status, func.count())
        .where(runs.c.env_id == env_id, runs.c.status.in_(("running", "queued")))
        .group_by(runs.c.status)
    )
    counts = {str(status): int(n) for status, n in await conn.execute(query)}
    return {"running": counts.get("running", 0), "queued": counts.get("queued", 0)}


async def stream_owner(
    conn: AsyncConnection, env_id: str, stream_id: str
) -> tuple[str | None, str | None] | None:
    """Who writes the environment's stream ``stream_id``: ``(event_id, None)`` for an event's
    runs, ``(None, run_id)`` for a run of no event (a schedule's); None when the environment
    has no such stream, whether or not another environment has it."""
    query = select(events.c.event_id).where(
        events.c.env_id == env_id, events.c.stream_id == stream_id
    )
    event_id = (await conn.execute(query.limit(1))).scalar()
    if event_id is not None:
        return str(event_id), None
    query = select(runs.c.run_id).where(
        runs.c.env_id == env_id, runs.c.stream_id == stream_id, runs.c.event_id.is_(None)
    )
    run_id = (await conn.execute(query.limit(1))).scalar()
    return (None, str(run_id)) if run_id is not None else None
