"""Core services over the in-memory sandbox backend and a SQLite file: no processes, no
network, a few milliseconds a test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentplex.core import environments
from agentplex.core.sandbox_tokens import SandboxTokens
from agentplex.core.sandboxes import SandboxService
from agentplex.core.templates import TemplateService
from agentplex.db import migrate
from agentplex.db.engine import Database
from agentplex.sandbox.memory import MemoryBackend
from agentplex.settings import SandboxSettings


class Core:
    """The sandbox services of one test, wired as the server wires them."""

    def __init__(self, db: Database, backend: MemoryBackend, env_id: str) -> None:
        self.db = db
        self.backend = backend
        self.env_id = env_id
        self.tokens = SandboxTokens(db, ttl_seconds=3600)
        self.templates = TemplateService(db, backend)
        settings = SandboxSettings(sweep_seconds=0.05, default_timeout_seconds=0)
        self.sandboxes = SandboxService(db, backend, self.templates, self.tokens, settings)


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[Core]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'core.db'}")
    await migrate.upgrade(db)
    async with db.write() as conn:
        env = await environments.ensure_default(conn)
    services = Core(db, MemoryBackend(), env.id)
    await services.templates.start()
    await services.sandboxes.start()
    try:
        yield services
    finally:
        await services.sandboxes.close()
        await services.templates.close()
        await db.dispose()
