"""Environments: the tenant boundary. Every API key and every row belongs to one."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from agentplex.core.clock import new_id, utcnow
from agentplex.db.engine import Database
from agentplex.db.records import run_queries
from agentplex.db.tables import environments
from agentplex.errors import BadRequest, Conflict, NotFound

DEFAULT_ENVIRONMENT = "default"


@dataclass(frozen=True, slots=True)
class Environment:
    id: str
    org_id: str
    name: str
    active: bool
    max_concurrent_runs: int
    requests_per_hour: int
    created_at: datetime


class EnvironmentNotFound(NotFound):
    """Environment not found."""


class EnvironmentExists(Conflict):
    """An environment with this name exists already."""


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


async def ensure_default(conn: AsyncConnection) -> Environment:
    """The default environment, created on first use."""
    existing = await get_by_name(conn, DEFAULT_ENVIRONMENT)
    return existing if existing is not None else await _insert(conn, DEFAULT_ENVIRONMENT)


async def _insert(conn: AsyncConnection, name: str) -> Environment:
    """A new environment called ``name``: its own org id, the default quotas."""
    env = Environment(
        id=new_id(),
        org_id=new_id(),
        name=name,
        active=True,
        max_concurrent_runs=50,
        requests_per_hour=1000,
        created_at=utcnow(),
    )
    await conn.execute(environments.insert().values(**_row(env)))
    return env


def _row(env: Environment) -> dict[str, object]:
    return {
        "id": env.id,
        "org_id": env.org_id,
        "name": env.name,
        "active": env.active,
        "max_concurrent_runs": env.max_concurrent_runs,
        "requests_per_hour": env.requests_per_hour,
        "created_at": env.created_at,
    }


async def get_by_name(conn: AsyncConnection, name: str) -> Environment | None:
    """The environment called ``name``, if any."""
    row = (await conn.execute(select(environments).where(environments.c.name == name))).first()
    return Environment(**row._mapping) if row else None


async def get(conn: AsyncConnection, env_id: str) -> Environment:
    """The environment with this id."""
    row = (await conn.execute(select(environments).where(environments.c.id == env_id))).first()
    if row is None:
        raise EnvironmentNotFound(f"Environment {env_id} not found")
    return Environment(**row._mapping)


async def create(conn: AsyncConnection, name: str) -> Environment:
    """A new environment (its own org id, the default quotas). BadRequest for a name that is
    not 1-100 letters, digits, ``.``, ``_`` or ``-``; EnvironmentExists if it is taken."""
    if not _NAME.match(name):
        raise BadRequest(
            f"Invalid environment name {name!r}: use 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if name == DEFAULT_ENVIRONMENT:
        await ensure_default(conn)
    if await get_by_name(conn, name) is not None:
        raise EnvironmentExists(f"An environment named {name!r} exists already")
    return await _insert(conn, name)


async def set_quota(
    conn: AsyncConnection,
    name: str,
    *,
    max_concurrent_runs: int | None = None,
    requests_per_hour: int | None = None,
) -> Environment:
    """Change the environment's quota (what is given): ``max_concurrent_runs`` (0..100,000:
    runs beyond it wait queued; 0 runs none) and ``requests_per_hour`` (shown by Hot's quota).
    EnvironmentNotFound, or BadRequest for a value out of range."""
    values: dict[str, int] = {}
    for key, value in (
        ("max_concurrent_runs", max_concurrent_runs),
        ("requests_per_hour", requests_per_hour),
    ):
        if value is None:
            continue
        if not 0 <= value <= 100_000:
            raise BadRequest(f"{key} is {value}: give a whole number from 0 to 100000")
        values[key] = value
    env = await get_by_name(conn, name)
    if env is None:
        raise EnvironmentNotFound(f"No environment named {name!r}")
    if values:
        await conn.execute(
            environments.update().where(environments.c.id == env.id).values(**values)
        )
    return await get(conn, env.id)


async def list_all(conn: AsyncConnection) -> list[Environment]:
    """Every environment, oldest first."""
    rows = await conn.execute(select(environments).order_by(environments.c.created_at))
    return [Environment(**row._mapping) for row in rows]


async def describe(db: Database, env_id: str) -> Environment:
    """The caller's environment (EnvironmentNotFound if it was removed)."""
    async with db.read() as conn:
        return await get(conn, env_id)


async def quota(db: Database, env_id: str) -> dict[str, Any]:
    """Hot's quota view of an environment, live: its limits, its runs running and queued now,
    and how much of ``max_concurrent_runs`` the running ones use, in percent (runs beyond the
    limit wait queued). No storage quota is enforced, so ``storage_used_percent`` is 0."""
    async with db.read() as conn:
        env = await get(conn, env_id)
        counts = await run_queries.count_running(conn, env_id)
    limit = env.max_concurrent_runs
    used = min(100, round(100 * counts["running"] / limit)) if limit else 0
    return {
        "compute_used_percent": used,
        "storage_used_percent": 0,
        "requests_per_hour": env.requests_per_hour,
        "max_concurrent_runs": limit,
        "running_runs": counts["running"],
        "queued_runs": counts["queued"],
    }
