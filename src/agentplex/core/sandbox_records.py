"""Sandbox records: what the control plane remembers about every sandbox.

The processes themselves belong to the sandbox manager; these rows are the source of truth for
the API (they survive restarts: a sandbox that was running comes back ``stopped``).
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from agentplex.core.clock import utcnow
from agentplex.db.tables import sandboxes
from agentplex.errors import BadRequest, NotFound


class SandboxNotFound(NotFound):
    """Sandbox not found."""

    surface_codes = {"hopx": "SANDBOX_NOT_FOUND"}


@dataclass(slots=True)
class SandboxRecord:
    id: str
    env_id: str
    template_id: str
    template_name: str
    status: str
    status_reason: str | None
    isolation: str
    internet_access: bool
    timeout_seconds: int | None
    resources: dict[str, Any]
    env_vars: dict[str, str]
    token_hash: str | None
    token_expires_at: datetime | None
    expires_at: datetime | None
    created_at: datetime
    updated_at: datetime


async def insert(conn: AsyncConnection, record: SandboxRecord) -> None:
    await conn.execute(sandboxes.insert().values(**asdict(record)))


async def get(conn: AsyncConnection, env_id: str, sandbox_id: str) -> SandboxRecord:
    """The sandbox ``sandbox_id`` of environment ``env_id``."""
    row = (
        await conn.execute(
            select(sandboxes).where(sandboxes.c.id == sandbox_id, sandboxes.c.env_id == env_id)
        )
    ).first()
    if row is None:
        raise SandboxNotFound(f"Sandbox {sandbox_id} not found")
    return SandboxRecord(**row._mapping)


async def by_token(conn: AsyncConnection, token_hash: str) -> SandboxRecord | None:
    """The sandbox whose data-plane token has this digest."""
    row = (
        await conn.execute(select(sandboxes).where(sandboxes.c.token_hash == token_hash))
    ).first()
    return SandboxRecord(**row._mapping) if row else None


async def update_fields(conn: AsyncConnection, sandbox_id: str, **values: Any) -> None:
    values["updated_at"] = utcnow()
    await conn.execute(update(sandboxes).where(sandboxes.c.id == sandbox_id).values(**values))


async def delete(conn: AsyncConnection, sandbox_id: str) -> None:
    await conn.execute(sandboxes.delete().where(sandboxes.c.id == sandbox_id))


def _encode_cursor(record: SandboxRecord) -> str:
    raw = json.dumps([record.created_at.isoformat(), record.id]).encode()
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
) -> tuple[list[SandboxRecord], str | None]:
    """Newest first; returns the page and the cursor of the next one (None at the end)."""
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
    rows = [SandboxRecord(**r._mapping) for r in await conn.execute(query)]
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (_encode_cursor(rows[-1]) if more and rows else None)


async def with_status(conn: AsyncConnection, statuses: tuple[str, ...]) -> list[SandboxRecord]:
    """Every sandbox (all environments) in one of ``statuses``."""
    rows = await conn.execute(select(sandboxes).where(sandboxes.c.status.in_(statuses)))
    return [SandboxRecord(**r._mapping) for r in rows]


async def expired(conn: AsyncConnection, now: datetime) -> list[SandboxRecord]:
    """Running or paused sandboxes whose timeout has passed."""
    rows = await conn.execute(
        select(sandboxes).where(
            sandboxes.c.status.in_(("running", "paused", "creating")),
            sandboxes.c.expires_at.is_not(None),
            sandboxes.c.expires_at <= now,
        )
    )
    return [SandboxRecord(**r._mapping) for r in rows]
