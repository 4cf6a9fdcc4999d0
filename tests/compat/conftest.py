"""Compat tests: the official client libraries against a real server on a loopback port."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from agentplex.settings import Settings
from tests.conftest import PG_URL, LiveServer, SettingsFactory

# the SDKs run against a server that requires a key, as every real deployment does
API_KEY = "compat-sdk-key"


@pytest.fixture
def sandbox_settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(sandbox={"pool_size": 1, "warm_on_start": True}, auth={"api_key": API_KEY})


@pytest.fixture
def sandbox_server(sandbox_settings: Settings) -> Iterator[LiveServer]:
    with LiveServer(sandbox_settings) as server:
        yield server


@contextmanager
def module_database(backend: str, tmp: Path) -> Iterator[str]:
    """conftest's ``database_url`` for a module-scoped server: a SQLite file in ``tmp``, or a
    PostgreSQL schema of its own, dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp / 'agentplex.db'}"
        return
    schema = "t_" + uuid.uuid4().hex[:16]
    libpq = PG_URL.replace("+psycopg", "")
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(libpq, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
