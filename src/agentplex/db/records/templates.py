"""Queries of custom templates and their builds."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from agentplex.db.tables import templates

Row = dict[str, Any]


async def insert(conn: AsyncConnection, values: Mapping[str, Any]) -> None:
    await conn.execute(templates.insert().values(**values))


async def find(conn: AsyncConnection, env_id: str, ref: str) -> Row | None:
    """The environment's template whose id or name is ``ref``."""
    query = select(templates).where(
        templates.c.env_id == env_id, (templates.c.id == ref) | (templates.c.name == ref)
    )
    row = (await conn.execute(query)).first()
    return dict(row._mapping) if row else None


async def of_env(conn: AsyncConnection, env_id: str) -> list[Row]:
    """The environment's templates, oldest first."""
    query = select(templates).where(templates.c.env_id == env_id).order_by(templates.c.created_at)
    return [dict(r._mapping) for r in await conn.execute(query)]


async def update_fields(conn: AsyncConnection, template_id: str, values: Mapping[str, Any]) -> None:
    await conn.execute(update(templates).where(templates.c.id == template_id).values(**values))


async def fail_unfinished(conn: AsyncConnection, message: str, now: datetime) -> None:
    """Mark every build still ``building`` as failed (the process running it is gone)."""
    await conn.execute(
        update(templates)
        .where(templates.c.status == "building")
        .values(status="failed", error_message=message, completed_at=now)
    )


async def remove(conn: AsyncConnection, template_id: str) -> None:
    await conn.execute(templates.delete().where(templates.c.id == template_id))
