"""Fixtures of the integration tests: a migrated database of the test's backend (SQLite or
PostgreSQL, see tests/conftest.py's ``database_url``) and its environments."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agentplex.core import environments
from agentplex.db import migrate
from agentplex.db.engine import Database


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """The migrated database, disposed of afterwards."""
    database = Database(database_url)
    await migrate.upgrade(database)
    yield database
    await database.dispose()


@pytest.fixture
async def env_id(db: Database) -> str:
    """The default environment's id."""
    async with db.write() as conn:
        return (await environments.ensure_default(conn)).id


@pytest.fixture
async def other_env_id(db: Database) -> str:
    """A second environment's id (for isolation tests)."""
    async with db.write() as conn:
        return (await environments.create(conn, "other")).id
