"""Queries of sandbox records and their data-plane tokens."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from agentplex.db.tables import sandbox_tokens, sandboxes
from agentplex.errors import BadRequest

Row = dict[str, Any]


async def insert(conn: AsyncConnection, values: Mapping[str, Any]) -> None:
    await conn.execute(sandboxes.insert().values(**values))


async def get(conn: AsyncConnection, env_id: str, sandbox_id: str) -> Row | None:
    """The sandbox ``sandbox_id`` if it belongs to environment ``env_id``."""
    query = select(sandboxes).where(sandboxes.c.id == sandbox_id, sandboxes.c.env_id == env_id)
    row = (await conn.execute(query)).first()
    return dict(row._mapping) if row else None


async def update_fields(conn: AsyncConnection, sandbox_id: str, values: Mapping[str, Any]) -> None:
    await conn.execute(update(sandboxes).where(sandboxes.c.id == sandbox_id).values(**values))


async def remove(conn: AsyncConnection, sandbox_id: str) -> None:
    """Delete the record (its tokens go with it)."""
    await conn.execute(sandbox_tokens.delete().where(sandbox_tokens.c.sandbox_id == sandbox_id))
    await conn.execute(sandboxes.delete().where(sandboxes.c.id == sandbox_id))


def _encode_cursor(row: Mapping[str, Any]) -> str:
    raw = json.dumps([row["created_at"].isoformat(), row["id"]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, sandbox_id = json.loads(raw)
        return datetime.fromisoformat(created), str(sandbox_id)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"Invalid cursor {cursor!r}: pass next_cursor back unchanged") from exc


async def page(
    conn: AsyncConnection,
    env_id: str,
    *,
    status: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[Row], str | None]:
    """Newest first; the page and the cursor of the next one (None at the end)."""
    query = select(sandboxes).where(sandboxes.c.env_id == env_id)
    if status:
        query = query.where(sandboxes.c.status == status)
    if cursor:
        created, last_id = _decode_cursor(cursor)
        query = query.where(
            or_(
                sandboxes.c.created_at < created,
                and_(sandboxes.c.created_at == created, sandboxes.c.id < last_id),
            )
        )
    query = query.order_by(sandboxes.c.created_at.desc(), sandboxes.c.id.desc()).limit(limit + 1)
    rows = [dict(r._mapping) for r in await conn.execute(query)]
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (_encode_cursor(rows[-1]) if more and rows else None)


async def count(conn: AsyncConnection, env_id: str, statuses: tuple[str, ...]) -> int:
    """How many sandboxes of environment ``env_id`` are in one of ``statuses``."""
    query = (
        select(func.count())
        .select_from(sandboxes)
        .where(sandboxes.c.env_id == env_id, sandboxes.c.status.in_(statuses))
    )
    return int((await conn.execute(query)).scalar_one())


async def with_status(conn: AsyncConnection, statuses: tuple[str, ...]) -> list[Row]:
    """Every sandbox (all environments) in one of ``statuses``."""
    rows = await conn.execute(select(sandboxes).where(sandboxes.c.status.in_(statuses)))
    return [dict(r._mapping) for r in rows]


async def expired(conn: AsyncConnection, now: datetime) -> list[Row]:
    """Live sandboxes whose timeout has passed."""
    rows = await conn.execute(
        select(sandboxes).where(
            sandboxes.c.status.in_(("running", "paused", "creating")),
            sandboxes.c.expires_at.is_not(None),
            sandboxes.c.expires_at <= now,
        )
    )
    return [dict(r._mapping) for r in rows]


async def using_template(conn: AsyncConnection, env_id: str, template_id: str) -> list[str]:
    """Ids (at most 5) of the environment's sandboxes made from ``template_id``."""
    query = (
        select(sandboxes.c.id)
        .where(sandboxes.c.env_id == env_id, sandboxes.c.template_id == template_id)
        .limit(5)
    )
    return [str(r[0]) for r in await conn.execute(query)]


# -- tokens ------------------------------------------------------------------------------------


async def add_token(conn: AsyncConnection, values: Mapping[str, Any]) -> None:
    """Store a token: ``token_hash``, ``sandbox_id``, ``env_id``, ``expires_at``,
    ``created_at``."""
    await conn.execute(sandbox_tokens.insert().values(**values))


async def token(conn: AsyncConnection, token_hash: str) -> Row | None:
    """The token with this digest (whatever its expiry)."""
    query = select(sandbox_tokens).where(sandbox_tokens.c.token_hash == token_hash)
    row = (await conn.execute(query)).first()
    return dict(row._mapping) if row else None


async def prune_tokens(conn: AsyncConnection, now: datetime) -> int:
    """Delete expired tokens; how many went."""
    result = await conn.execute(delete(sandbox_tokens).where(sandbox_tokens.c.expires_at < now))
    return int(result.rowcount or 0)
