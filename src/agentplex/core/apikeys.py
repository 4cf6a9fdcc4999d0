"""API keys: random secrets shown once, stored only as SHA-256 digests.

Keys carry 256 bits of randomness, so a fast digest is the right tool (as for GitHub tokens):
there is nothing to brute-force that a slow KDF would protect.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Column, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from agentplex.core.clock import new_id, utcnow
from agentplex.db.tables import api_keys
from agentplex.errors import NotFound

KEY_PREFIX = "apx_"


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    env_id: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyNotFound(NotFound):
    """No active API key matches."""


def hash_key(key: str) -> str:
    """The digest a key is stored and looked up by."""
    return hashlib.sha256(key.encode()).hexdigest()


async def create(conn: AsyncConnection, env_id: str, name: str) -> tuple[ApiKey, str]:
    """Create a key; returns its record and the plaintext, which is never stored."""
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        id=new_id(),
        env_id=env_id,
        name=name,
        prefix=plaintext[:12],
        created_at=utcnow(),
        last_used_at=None,
        revoked_at=None,
    )
    await conn.execute(
        api_keys.insert().values(
            id=key.id,
            env_id=env_id,
            name=name,
            prefix=key.prefix,
            key_hash=hash_key(plaintext),
            created_at=key.created_at,
        )
    )
    return key, plaintext


async def list_keys(conn: AsyncConnection, *, include_revoked: bool = False) -> list[ApiKey]:
    """Every key, newest first."""
    query = select(*_columns()).order_by(api_keys.c.created_at.desc())
    if not include_revoked:
        query = query.where(api_keys.c.revoked_at.is_(None))
    return [ApiKey(**row._mapping) for row in await conn.execute(query)]


async def revoke(conn: AsyncConnection, id_or_prefix: str) -> ApiKey:
    """Revoke the active key with this id or prefix (a prefix must match exactly one key)."""
    matches = (
        await conn.execute(
            select(*_columns()).where(
                api_keys.c.revoked_at.is_(None),
                or_(api_keys.c.id == id_or_prefix, api_keys.c.prefix == id_or_prefix),
            )
        )
    ).all()
    if len(matches) != 1:
        raise ApiKeyNotFound(
            f"No single active key has id or prefix {id_or_prefix!r}"
            + (f" ({len(matches)} match)" if matches else "")
        )
    key = ApiKey(**matches[0]._mapping)
    await conn.execute(update(api_keys).where(api_keys.c.id == key.id).values(revoked_at=utcnow()))
    return key


async def lookup(conn: AsyncConnection, key_hash: str) -> tuple[ApiKey, str] | None:
    """The active key with this digest, and the stored digest to compare against."""
    row = (
        await conn.execute(
            select(*_columns(), api_keys.c.key_hash).where(
                api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None)
            )
        )
    ).first()
    if row is None:
        return None
    data = dict(row._mapping)
    stored = data.pop("key_hash")
    return ApiKey(**data), stored


async def count_active(conn: AsyncConnection) -> int:
    """How many keys can still be used."""
    query = select(func.count()).select_from(api_keys).where(api_keys.c.revoked_at.is_(None))
    return int((await conn.execute(query)).scalar_one())


async def any_created(conn: AsyncConnection) -> bool:
    """Whether a key was ever created here, revoked or not (once one was, auth stays on)."""
    return (await conn.execute(select(api_keys.c.id).limit(1))).first() is not None


async def touch(conn: AsyncConnection, key_ids: list[str], when: datetime) -> None:
    """Record that these keys were used."""
    if key_ids:
        await conn.execute(
            update(api_keys).where(api_keys.c.id.in_(key_ids)).values(last_used_at=when)
        )


def _columns() -> list[Column[Any]]:
    c = api_keys.c
    return [c.id, c.env_id, c.name, c.prefix, c.created_at, c.last_used_at, c.revoked_at]
