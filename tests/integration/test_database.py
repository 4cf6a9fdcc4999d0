"""The schema and the key store on real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from agentplex.core import apikeys, environments
from agentplex.core.auth import Authenticator
from agentplex.db import migrate
from agentplex.db.engine import Database
from agentplex.db.tables import metadata
from agentplex.settings import AuthSettings


async def test_migrations_reach_head_and_are_idempotent(db: Database) -> None:
    assert await migrate.current_revision(db) == migrate.head_revision()
    assert await migrate.is_current(db)
    await migrate.upgrade(db)  # a second start changes nothing
    assert await migrate.is_current(db)


async def test_the_migrations_build_exactly_the_tables_the_code_defines(db: Database) -> None:
    """Every table, column, type, index and constraint of `db/tables.py` is what the Alembic
    migrations made, and the migrations made nothing else."""

    def diff(sync_conn: sa.Connection) -> list[object]:
        context = MigrationContext.configure(sync_conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    async with db.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_unmigrated_database_is_reported(database_url: str) -> None:
    fresh = Database(database_url)
    try:
        assert not await migrate.is_current(fresh)
    finally:
        await fresh.dispose()


async def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'wal.db'}")
    try:
        await migrate.upgrade(db)
        async with db.read() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
    finally:
        await db.dispose()


async def test_concurrent_writers_do_not_fail(db: Database) -> None:
    async with db.write() as conn:
        env = await environments.ensure_default(conn)

    async def create(n: int) -> None:
        async with db.write() as conn:
            await apikeys.create(conn, env.id, f"key-{n}")

    await asyncio.gather(*(create(n) for n in range(20)))
    async with db.read() as conn:
        assert await apikeys.count_active(conn) == 20


async def test_keys_are_stored_hashed_and_can_be_revoked(db: Database) -> None:
    async with db.write() as conn:
        env = await environments.ensure_default(conn)
        key, plaintext = await apikeys.create(conn, env.id, "ci")
    async with db.read() as conn:
        stored = (await conn.execute(text("SELECT key_hash, prefix FROM api_keys"))).one()
    assert plaintext not in stored.key_hash
    assert stored.key_hash == apikeys.hash_key(plaintext)
    assert plaintext.startswith(stored.prefix)

    auth = Authenticator(db, AuthSettings(cache_seconds=0))
    auth.set_default_env(env.id)
    principal = await auth.authenticate(plaintext)
    assert principal is not None and principal.key_id == key.id and principal.env_id == env.id
    assert await auth.authenticate(plaintext + "x") is None
    assert await auth.authenticate("") is None

    await auth.flush_usage()
    async with db.read() as conn:
        [listed] = await apikeys.list_keys(conn)
    assert listed.last_used_at is not None

    async with db.write() as conn:
        await apikeys.revoke(conn, key.prefix)
    assert await auth.authenticate(plaintext) is None
    async with db.read() as conn:
        assert await apikeys.count_active(conn) == 0
        assert len(await apikeys.list_keys(conn, include_revoked=True)) == 1


async def test_revoking_an_unknown_key_says_so(db: Database) -> None:
    async with db.write() as conn:
        with pytest.raises(apikeys.ApiKeyNotFound, match="apx_nope"):
            await apikeys.revoke(conn, "apx_nope")


async def test_sandbox_tokens_move_to_their_own_table(database_url: str) -> None:
    # 0004: the one token a sandbox had stays valid; sandboxes lose their token columns
    database = Database(database_url)
    try:
        await migrate.upgrade(database, "0003")
        now = datetime(2026, 1, 1, tzinfo=UTC)
        old = sa.table(
            "sandboxes",
            *(sa.column(c) for c in ("id", "env_id", "template_id", "template_name", "status")),
            *(sa.column(c) for c in ("isolation", "internet_access", "token_hash")),
            sa.column("resources", sa.JSON),
            sa.column("env_vars", sa.JSON),
            *(
                sa.column(c, sa.DateTime(timezone=True))
                for c in ("token_expires_at", "created_at", "updated_at")
            ),
        )
        async with database.write() as conn:
            env = await environments.ensure_default(conn)
            await conn.execute(
                old.insert().values(
                    id="sbx_old",
                    env_id=env.id,
                    template_id="bash",
                    template_name="bash",
                    status="stopped",
                    isolation="bubblewrap",
                    internet_access=False,
                    resources={},
                    env_vars={},
                    token_hash="d" * 64,
                    token_expires_at=datetime(2099, 1, 1, tzinfo=UTC),
                    created_at=now,
                    updated_at=now,
                )
            )
        await migrate.upgrade(database)
        async with database.read() as conn:
            rows = (
                await conn.execute(text("SELECT sandbox_id, token_hash FROM sandbox_tokens"))
            ).all()
            columns = (await conn.execute(text("SELECT * FROM sandboxes"))).keys()
        assert [tuple(r) for r in rows] == [("sbx_old", "d" * 64)]
        assert "token_hash" not in columns and "token_expires_at" not in columns
    finally:
        await database.dispose()
