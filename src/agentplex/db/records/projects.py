"""Queries of Hot projects and their context variables (stored encrypted: this module only
moves ciphertext; ``core.secrets`` encrypts and decrypts)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from agentplex.db.tables import project_secrets, projects

Row = dict[str, Any]

# what a context variable's listing shows: never the ciphertext, never the nonce
_SECRET_METADATA = (
    project_secrets.c.project_id,
    project_secrets.c.key,
    project_secrets.c.description,
    project_secrets.c.created_at,
    project_secrets.c.updated_at,
)


# -- projects ----------------------------------------------------------------------------------


async def insert_project(conn: AsyncConnection, values: Mapping[str, Any]) -> None:
    await conn.execute(projects.insert().values(**values))


async def get_project(conn: AsyncConnection, env_id: str, project_id: str) -> Row | None:
    """The project ``project_id`` if it belongs to environment ``env_id``."""
    query = select(projects).where(projects.c.project_id == project_id, projects.c.env_id == env_id)
    row = (await conn.execute(query)).first()
    return dict(row._mapping) if row else None


async def get_project_by_name(conn: AsyncConnection, env_id: str, name: str) -> Row | None:
    query = select(projects).where(projects.c.env_id == env_id, projects.c.name == name)
    row = (await conn.execute(query)).first()
    return dict(row._mapping) if row else None


async def list_projects(
    conn: AsyncConnection, env_id: str, *, limit: int, offset: int
) -> tuple[list[Row], int]:
    """A page of the environment's projects by name, and how many it has in all."""
    total = await conn.execute(
        select(func.count()).select_from(projects).where(projects.c.env_id == env_id)
    )
    query = (
        select(projects)
        .where(projects.c.env_id == env_id)
        .order_by(projects.c.name)
        .limit(limit)
        .offset(offset)
    )
    rows = [dict(r._mapping) for r in await conn.execute(query)]
    return rows, int(total.scalar_one())


async def update_project(conn: AsyncConnection, project_id: str, values: Mapping[str, Any]) -> None:
    await conn.execute(update(projects).where(projects.c.project_id == project_id).values(**values))


async def delete_project(conn: AsyncConnection, project_id: str) -> None:
    """Delete the project; what belongs to it goes with it (foreign keys cascade)."""
    await conn.execute(delete(projects).where(projects.c.project_id == project_id))


# -- context variables -------------------------------------------------------------------------


async def list_secrets(
    conn: AsyncConnection, project_id: str, *, limit: int, offset: int
) -> tuple[list[Row], int]:
    """A page of the project's context variables by key (metadata only), and the total."""
    total = await conn.execute(
        select(func.count())
        .select_from(project_secrets)
        .where(project_secrets.c.project_id == project_id)
    )
    query = (
        select(*_SECRET_METADATA)
        .where(project_secrets.c.project_id == project_id)
        .order_by(project_secrets.c.key)
        .limit(limit)
        .offset(offset)
    )
    rows = [dict(r._mapping) for r in await conn.execute(query)]
    return rows, int(total.scalar_one())


async def get_secret(conn: AsyncConnection, project_id: str, key: str) -> Row | None:
    """The whole row (ciphertext included) of one context variable."""
    query = select(project_secrets).where(
        project_secrets.c.project_id == project_id, project_secrets.c.key == key
    )
    row = (await conn.execute(query)).first()
    return dict(row._mapping) if row else None


async def all_secrets(conn: AsyncConnection, project_id: str) -> list[Row]:
    """Every context variable of the project, ciphertext included, by key."""
    query = (
        select(project_secrets)
        .where(project_secrets.c.project_id == project_id)
        .order_by(project_secrets.c.key)
    )
    return [dict(r._mapping) for r in await conn.execute(query)]


async def insert_secret(conn: AsyncConnection, values: Mapping[str, Any]) -> None:
    await conn.execute(project_secrets.insert().values(**values))


async def update_secret(
    conn: AsyncConnection, project_id: str, key: str, values: Mapping[str, Any]
) -> None:
    await conn.execute(
        update(project_secrets)
        .where(project_secrets.c.project_id == project_id, project_secrets.c.key == key)
        .values(**values)
    )


async def delete_secret(conn: AsyncConnection, project_id: str, key: str) -> bool:
    """Delete one context variable; whether there was one."""
    result = await conn.execute(
        delete(project_secrets).where(
            project_secrets.c.project_id == project_id, project_secrets.c.key == key
        )
    )
    return bool(result.rowcount)
