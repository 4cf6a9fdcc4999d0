"""Queries of run vars: what handlers captured, written in batches by the workers and read a
page at a time by the API (``/v1/runs/{id}/vars``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from agentplex.db.tables import run_vars

Row = dict[str, Any]


async def insert(conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Store these vars (rows of every column)."""
    if rows:
        await conn.execute(run_vars.insert(), [dict(r) for r in rows])


async def page(
    conn: AsyncConnection, run_id: str, *, limit: int = 100, offset: int = 0
) -> tuple[list[Row], int]:
    """The run's vars in the order they were captured, a page of them, and their total."""
    where = run_vars.c.run_id == run_id
    total = (await conn.execute(select(func.count()).select_from(run_vars).where(where))).scalar()
    query = (
        select(run_vars)
        .where(where)
        .order_by(run_vars.c.start_time, run_vars.c.var_id)
        .limit(limit)
        .offset(offset)
    )
    return [dict(r._mapping) for r in await conn.execute(query)], int(total or 0)
