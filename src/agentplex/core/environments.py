"""Environments: the tenant boundary. Every API key and every row belongs to one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from agentplex.core.clock import new_id, utcnow
from agentplex.db.tables import environments
from agentplex.errors import NotFound

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


async def ensure_default(conn: AsyncConnection) -> Environment:
    """The default environment, created on first use."""
    existing = await get_by_name(conn, DEFAULT_ENVIRONMENT)
    if existing is not None:
        return existing
    env = Environment(
        id=new_id(),
        org_id=new_id(),
        name=DEFAULT_ENVIRONMENT,
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
