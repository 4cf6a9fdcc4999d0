"""Queries of published events, and of the deployed entry points an event starts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from agentplex.db.tables import builds, event_handlers, events, projects

Row = dict[str, Any]


async def insert(conn: AsyncConnection, values: Mapping[str, Any]) -> None:
    await conn.execute(events.insert().values(**values))


async def get(conn: AsyncConnection, env_id: str, event_id: str) -> Row | None:
    """The environment's event ``event_id``."""
    query = select(events).where(events.c.env_id == env_id, events.c.event_id == event_id)
    row = (await conn.execute(query)).first()
    return dict(row._mapping) if row else None


async def page(
    conn: AsyncConnection, env_id: str, *, limit: int, offset: int
) -> tuple[list[Row], int]:
    """Newest first: a page of the environment's events and their total."""
    where = events.c.env_id == env_id
    total = (await conn.execute(select(func.count()).select_from(events).where(where))).scalar()
    query = (
        select(events)
        .where(where)
        .order_by(events.c.created_at.desc(), events.c.event_id.desc())
        .limit(limit)
        .offset(offset)
    )
    return [dict(r._mapping) for r in await conn.execute(query)], int(total or 0)


async def matching_handlers(conn: AsyncConnection, env_id: str, event_type: str) -> list[Row]:
    """The handlers of ``event_type`` in the environment's deployed builds (of active
    projects), in a stable order."""
    query = (
        select(event_handlers)
        .join(projects, projects.c.project_id == event_handlers.c.project_id)
        .where(
            event_handlers.c.env_id == env_id,
            event_handlers.c.event_type == event_type,
            projects.c.active.is_(True),
        )
        .order_by(event_handlers.c.project_id, event_handlers.c.function)
    )
    return [dict(r._mapping) for r in await conn.execute(query)]


async def deployed_builds(conn: AsyncConnection, env_id: str) -> list[Row]:
    """The deployed build of each active project of the environment: ``build_id``,
    ``project_id``, ``project_name`` and ``manifest``."""
    query = (
        select(
            builds.c.build_id,
            builds.c.project_id,
            projects.c.name.label("project_name"),
            builds.c.manifest,
        )
        .join(projects, projects.c.project_id == builds.c.project_id)
        .where(
            builds.c.env_id == env_id,
            builds.c.deployed.is_(True),
            projects.c.active.is_(True),
        )
        .order_by(projects.c.name)
    )
    return [dict(r._mapping) for r in await conn.execute(query)]
