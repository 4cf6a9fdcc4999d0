"""Queries of the scheduler (engine.scheduler): the schedules that fire, and which of a
schedule's fires are queued already (runs' ``dedupe_key``)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from agentplex.db.tables import builds, projects, runs, schedules

Row = dict[str, Any]

_CHUNK = 500


def _firing() -> Any:
    """Schedules of deployed builds of active projects (every environment)."""
    return (
        select(schedules)
        .join(builds, builds.c.build_id == schedules.c.build_id)
        .join(projects, projects.c.project_id == schedules.c.project_id)
        .where(builds.c.deployed.is_(True), projects.c.active.is_(True))
    )


async def firing(conn: AsyncConnection) -> list[Row]:
    """Every schedule that fires: those of the deployed builds of active projects, in every
    environment, in a stable order."""
    query = _firing().order_by(schedules.c.env_id, schedules.c.schedule_id)
    return [dict(r._mapping) for r in await conn.execute(query)]


async def still_firing(
    conn: AsyncConnection, schedule_ids: Collection[str], project_ids: Collection[str]
) -> set[str]:
    """Which of these schedules (of these projects) still fire. On PostgreSQL the projects'
    rows are locked first (FOR KEY SHARE, in a fixed order, as the runs' foreign key would
    lock them anyway) until the transaction ends: a deploy, which locks its project's row
    FOR UPDATE before it replaces the schedules, then waits for the fires being queued, or
    is seen as done. Locking the schedules' rows instead would deadlock with the deploy.
    (SQLite's writers are serialised anyway.)"""
    if conn.dialect.name == "postgresql" and project_ids:
        lock = (
            select(projects.c.project_id)
            .where(projects.c.project_id.in_(sorted(project_ids)))
            .order_by(projects.c.project_id)
            .with_for_update(key_share=True)
        )
        await conn.execute(lock)
    found: set[str] = set()
    ids = list(schedule_ids)
    for i in range(0, len(ids), _CHUNK):
        query = _firing().where(schedules.c.schedule_id.in_(ids[i : i + _CHUNK]))
        query = query.with_only_columns(schedules.c.schedule_id)
        found.update(str(r) for r in (await conn.execute(query)).scalars())
    return found


async def existing_keys(conn: AsyncConnection, env_id: str, keys: Collection[str]) -> set[str]:
    """Which of these ``dedupe_key``s the environment's runs have (an index lookup each)."""
    found: set[str] = set()
    wanted = list(keys)
    for i in range(0, len(wanted), _CHUNK):
        query = select(runs.c.dedupe_key).where(
            runs.c.env_id == env_id, runs.c.dedupe_key.in_(wanted[i : i + _CHUNK])
        )
        found.update(str(k) for k in (await conn.execute(query)).scalars())
    return found
