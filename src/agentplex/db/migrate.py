"""Alembic migrations, applied programmatically on start."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from agentplex.db.engine import Database

_ADVISORY_LOCK_ID = 0x61_67_70_6C  # "agpl": serialises migrations of concurrent replicas


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "agentplex.db:migrations")
    return cfg


def head_revision() -> str | None:
    """The newest migration this code knows."""
    return ScriptDirectory.from_config(_config()).get_current_head()


async def upgrade(db: Database, revision: str = "head") -> None:
    """Bring the schema to ``revision``, the newest by default (safe to call from several
    processes)."""

    def _run(connection: Any) -> None:
        cfg = _config()
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)

    async with db.engine.connect() as conn:
        if not db.is_sqlite:
            await conn.execute(text(f"SELECT pg_advisory_lock({_ADVISORY_LOCK_ID})"))
            await conn.commit()
        try:
            await conn.run_sync(_run)
            await conn.commit()
        finally:
            if not db.is_sqlite:
                await conn.execute(text(f"SELECT pg_advisory_unlock({_ADVISORY_LOCK_ID})"))
                await conn.commit()


async def current_revision(db: Database) -> str | None:
    """The revision the database is at (None when never migrated)."""

    def _current(connection: Any) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with db.engine.connect() as conn:
        return await conn.run_sync(_current)


async def is_current(db: Database) -> bool:
    """Whether the database is at the newest revision (cheap enough for a readiness probe)."""
    async with db.engine.connect() as conn:
        try:
            result = await conn.execute(text("SELECT version_num FROM alembic_version"))
        except DBAPIError:
            return False  # never migrated: the table does not exist
        return result.scalar_one_or_none() == _HEAD


_HEAD = head_revision()
