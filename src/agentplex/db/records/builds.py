"""Queries of builds, the deployed build's event handlers and schedules, and the blob table."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from agentplex.db.tables import blobs, builds, event_handlers, projects, schedules

Row = dict[str, Any]

_WITH_PROJECT_NAME = (builds, projects.c.name.label("project_name"))


def _insert(conn: AsyncConnection, table: Any) -> Any:
    """An INSERT that can say ON CONFLICT on either backend."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


async def insert(conn: AsyncConnection, values: Mapping[str, Any]) -> bool:
    """Insert a build; False (and nothing written) when its ``build_id`` exists already."""
    query = (
        _insert(conn, builds).values(**values).on_conflict_do_nothing().returning(builds.c.build_id)
    )
    # rowcount is -1 after an INSERT on psycopg: what comes back says whether it wrote
    return (await conn.execute(query)).first() is not None


async def get(conn: AsyncConnection, build_id: str) -> Row | None:
    """The build ``build_id`` (any environment), with its project's name."""
    query = (
        select(*_WITH_PROJECT_NAME)
        .join(projects, projects.c.project_id == builds.c.project_id)
        .where(builds.c.build_id == build_id)
    )
    row = (await conn.execute(query)).first()
    return dict(row._mapping) if row else None


async def flagged(conn: AsyncConnection, project_id: str, flag: str) -> Row | None:
    """The project's build whose ``flag`` (``deployed`` or ``live``) is set."""
    query = (
        select(*_WITH_PROJECT_NAME)
        .join(projects, projects.c.project_id == builds.c.project_id)
        .where(builds.c.project_id == project_id, builds.c[flag].is_(True))
        .order_by(builds.c.updated_at.desc())
        .limit(1)
    )
    row = (await conn.execute(query)).first()
    return dict(row._mapping) if row else None


async def page(
    conn: AsyncConnection, env_id: str, project_id: str | None, *, limit: int, offset: int
) -> tuple[list[Row], int]:
    """Newest first: a page of the environment's builds (or one project's) and the total."""
    where = [builds.c.env_id == env_id]
    if project_id is not None:
        where.append(builds.c.project_id == project_id)
    total = (
        await conn.execute(select(func.count()).select_from(builds).where(*where))
    ).scalar_one()
    query = (
        select(*_WITH_PROJECT_NAME)
        .join(projects, projects.c.project_id == builds.c.project_id)
        .where(*where)
        .order_by(builds.c.created_at.desc(), builds.c.build_id.desc())
        .limit(limit)
        .offset(offset)
    )
    return [dict(r._mapping) for r in await conn.execute(query)], int(total)


async def lock_project(conn: AsyncConnection, project_id: str) -> bool:
    """Lock the project's row until the transaction ends (PostgreSQL; SQLite's writers are
    serialised anyway), so that two deploys of one project run one after the other. False
    when the project is gone."""
    query = select(projects.c.project_id).where(projects.c.project_id == project_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return (await conn.execute(query)).first() is not None


async def set_flag(
    conn: AsyncConnection, project_id: str, build_id: str, flag: str, now: datetime
) -> None:
    """Make ``build_id`` the project's only build with ``flag`` set."""
    column = builds.c[flag]
    await conn.execute(
        update(builds)
        .where(builds.c.project_id == project_id, column.is_(True), builds.c.build_id != build_id)
        .values({flag: False, "updated_at": now})
    )
    values: dict[str, Any] = {flag: True, "updated_at": now}
    if flag == "deployed":
        values["deployed_at"] = now
    await conn.execute(update(builds).where(builds.c.build_id == build_id).values(values))


async def replace_entry_points(
    conn: AsyncConnection,
    project_id: str,
    handlers: Sequence[Mapping[str, Any]],
    schedule_rows: Sequence[Mapping[str, Any]],
) -> None:
    """Replace the project's event handlers and schedules with these."""
    await conn.execute(delete(event_handlers).where(event_handlers.c.project_id == project_id))
    await conn.execute(delete(schedules).where(schedules.c.project_id == project_id))
    if handlers:
        await conn.execute(event_handlers.insert(), [dict(h) for h in handlers])
    if schedule_rows:
        await conn.execute(schedules.insert(), [dict(s) for s in schedule_rows])


async def entry_points(
    conn: AsyncConnection, kind: str, project_id: str, *, limit: int, offset: int
) -> tuple[list[Row], int]:
    """A page of the project's ``event_handlers`` or ``schedules`` and their total."""
    table = event_handlers if kind == "event_handlers" else schedules
    where = table.c.project_id == project_id
    total = (await conn.execute(select(func.count()).select_from(table).where(where))).scalar_one()
    order = (table.c.event_type,) if table is event_handlers else (table.c.cron,)
    query = select(table).where(where).order_by(*order, table.c.function).limit(limit)
    rows = await conn.execute(query.offset(offset))
    return [dict(r._mapping) for r in rows], int(total)


# -- blobs (DatabaseBlobStore) -----------------------------------------------------------------


async def put_blob(conn: AsyncConnection, key: str, data: bytes, now: datetime) -> None:
    """Write ``key`` (replacing it)."""
    query = _insert(conn, blobs).values(key=key, data=data, size=len(data), created_at=now)
    query = query.on_conflict_do_update(
        index_elements=[blobs.c.key], set_={"data": data, "size": len(data)}
    )
    await conn.execute(query)


async def get_blob(conn: AsyncConnection, key: str) -> bytes | None:
    value = (await conn.execute(select(blobs.c.data).where(blobs.c.key == key))).scalar()
    return bytes(value) if value is not None else None


async def blob_exists(conn: AsyncConnection, key: str) -> bool:
    query = select(blobs.c.key).where(blobs.c.key == key)
    return (await conn.execute(query)).first() is not None


async def delete_blob(conn: AsyncConnection, key: str) -> None:
    await conn.execute(delete(blobs).where(blobs.c.key == key))


async def blob_keys_of_project(conn: AsyncConnection, project_id: str) -> set[str]:
    """The blob keys the project's builds are stored under."""
    query = select(builds.c.blob_key).where(builds.c.project_id == project_id).distinct()
    return {str(key) for key in (await conn.execute(query)).scalars()}


async def unused_blob_keys(conn: AsyncConnection, keys: Sequence[str]) -> set[str]:
    """Which of ``keys`` no build references (builds of equal contents share one blob, across
    projects and environments)."""
    if not keys:
        return set()
    query = select(builds.c.blob_key).where(builds.c.blob_key.in_(list(keys))).distinct()
    used = {str(key) for key in (await conn.execute(query)).scalars()}
    return set(keys) - used


async def manifests(conn: AsyncConnection, build_ids: Collection[str]) -> dict[str, Any]:
    """The stored manifest (JSON) of each of these builds that exists."""
    if not build_ids:
        return {}
    query = select(builds.c.build_id, builds.c.manifest).where(
        builds.c.build_id.in_(sorted(build_ids))
    )
    return {str(row.build_id): row.manifest for row in await conn.execute(query)}
