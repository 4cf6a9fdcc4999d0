"""Fixtures shared by every test tier.

The database-backed tests run once per backend: SQLite (a file in a temp dir) and PostgreSQL
(a fresh schema in AGENTPLEX_TEST_POSTGRES_URL per test). Limit the backends for a quick local
run with AGENTPLEX_TEST_BACKENDS=sqlite; CI runs both.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from asgi_lifespan import LifespanManager

from agentplex.app import create_app
from agentplex.settings import Settings, load_settings

PG_URL = os.environ.get(
    "AGENTPLEX_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("AGENTPLEX_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
BACKENDS = [b for b in os.environ.get("AGENTPLEX_TEST_BACKENDS", "sqlite,postgresql").split(",")]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own AGENTPLEX_* variables must not leak into tests."""
    for name in list(os.environ):
        if name.startswith("AGENTPLEX_") or name == "HOTPLEX_API_KEY":
            monkeypatch.delenv(name)


@contextmanager
def fresh_database(backend: str, tmp: Path) -> Iterator[str]:
    """The URL of a fresh, empty database of ``backend``: a SQLite file in ``tmp``, or a
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


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL on a fresh, empty database of each backend."""
    with fresh_database(request.param, tmp_path) as url:
        yield url


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(database_url: str, tmp_path: Path) -> SettingsFactory:
    """Settings on the test database; keyword arguments are per-subsystem overrides."""

    def make(**sections: dict[str, Any]) -> Settings:
        overrides: dict[str, dict[str, Any]] = {
            "server": {"data_dir": tmp_path / "data"},
            "database": {"url": database_url},
            # the sandbox layer starts on first use unless a test asks for it up front
            "sandbox": {"warm_on_start": False},
        }
        for name, values in sections.items():
            overrides.setdefault(name, {}).update(values)
        return load_settings(None, overrides)

    return make


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings()


async def open_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://agentplex") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to an in-process app (lifespan started)."""
    async for c in open_client(settings):
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """The app served by uvicorn on a loopback port, in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("live server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def live_server(settings: Settings) -> Iterator[LiveServer]:
    """A real server on 127.0.0.1 for streaming and WebSocket tests."""
    with LiveServer(settings) as server:
        yield server
