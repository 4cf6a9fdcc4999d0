"""The running server's core services, built once and shared by every surface."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from agentplex import __version__
from agentplex.bus import Bus, create_bus
from agentplex.core import environments
from agentplex.core.auth import Authenticator, Principal
from agentplex.core.clock import utcnow
from agentplex.core.logs import LogStore, configure_logging
from agentplex.core.sandbox_records import SandboxRecord
from agentplex.core.sandboxes import SandboxService
from agentplex.core.streams import StreamStore
from agentplex.core.templates import TemplateService
from agentplex.db import migrate
from agentplex.db.engine import Database
from agentplex.settings import Settings

if TYPE_CHECKING:
    from agentplex.sandbox import SandboxManager

log = logging.getLogger("agentplex.server")

_USAGE_FLUSH_SECONDS = 30.0


class Runtime:
    """Settings plus the services built from them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.version = __version__
        self.git_sha = _git_sha()
        self.started_at: datetime = utcnow()
        self.started_monotonic = time.monotonic()
        self.logs = LogStore(settings.log.store_size)
        self.db = Database(
            settings.database_url,
            pool_size=settings.database.pool_size,
            busy_timeout_ms=settings.database.busy_timeout_ms,
            echo=settings.database.echo,
        )
        self.bus: Bus = create_bus(settings.bus.url)
        self.streams = StreamStore(self.db, self.bus, settings.streams.ring_size)
        self.auth = Authenticator(self.db, settings.auth)
        self.sandboxes: SandboxService | None = None
        self.templates: TemplateService | None = None
        self.sandbox_manager: SandboxManager | None = None
        self.default_env_id = ""
        self.ready = False
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def uptime_seconds(self) -> float:
        return time.monotonic() - self.started_monotonic

    async def start(self) -> None:
        """Migrate the database, connect the bus and start background work."""
        configure_logging(
            self.logs,
            self.settings.log.level,
            self.settings.log.format,
            self.settings.log.access_log,
        )
        self.settings.server.ensure_data_dir()
        await migrate.upgrade(self.db)
        async with self.db.write() as conn:
            env = await environments.ensure_default(conn)
        self.default_env_id = env.id
        self.auth.set_default_env(env.id)
        await self.bus.start()
        self._tasks.append(asyncio.create_task(self._flush_key_usage(), name="key-usage"))
        if self.settings.sandbox.enabled:
            await self._start_sandboxes()
        self.ready = True
        log.info(
            "agentplex %s started: database %s, bus %s",
            self.version,
            self.db.describe(),
            self.settings.bus.url.split("@")[-1],
        )

    async def _start_sandboxes(self) -> None:
        from agentplex.sandbox import SandboxManager

        config = self.settings.sandbox
        self.sandbox_manager = SandboxManager(
            self.settings.server.data_dir,
            allow_unisolated=config.allow_unisolated,
            pool_size=config.pool_size,
        )
        isolation = self.sandbox_manager.isolation
        if isolation.kind == "none":
            log.warning(
                "SANDBOX ISOLATION UNAVAILABLE: %s. Sandboxes are %s.",
                isolation.reason,
                "run WITHOUT isolation (sandbox.allow_unisolated)"
                if config.allow_unisolated
                else "refused until bubblewrap works or sandbox.allow_unisolated is set",
            )
        self.templates = TemplateService(
            self.db, self.sandbox_manager, self.settings.server.data_dir
        )
        await self.templates.start()
        self.sandboxes = SandboxService(self.db, self.sandbox_manager, config, self.templates)
        await self.sandboxes.start()
        self.auth.add_token_verifier(self._verify_sandbox_token)
        self.sandboxes.on_token = lambda token, record: self.auth.remember(
            token, _sandbox_principal(record)
        )
        if config.warm_on_start:
            self._tasks.append(asyncio.create_task(self._open_sandboxes(), name="sandbox-open"))

    async def _open_sandboxes(self) -> None:
        assert self.sandbox_manager is not None
        try:
            await self.sandbox_manager.open()
        except Exception:
            log.exception("could not start the sandbox layer; sandbox requests will retry")

    async def _verify_sandbox_token(self, token: str) -> Principal | None:
        assert self.sandboxes is not None
        record = await self.sandboxes.by_token(token)
        return None if record is None else _sandbox_principal(record)

    async def stop(self) -> None:
        """Stop background work and release connections."""
        self.ready = False
        if self.templates is not None:
            await self.templates.close()
        if self.sandboxes is not None:
            await self.sandboxes.close()
        if self.sandbox_manager is not None:
            with contextlib.suppress(Exception):
                await self.sandbox_manager.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self.auth.flush_usage()
        await self.bus.close()
        await self.db.dispose()
        log.info("agentplex stopped")

    async def _flush_key_usage(self) -> None:
        while True:
            await asyncio.sleep(_USAGE_FLUSH_SECONDS)
            try:
                await self.auth.flush_usage()
            except Exception:
                log.exception("could not record API key usage")


def _sandbox_principal(record: SandboxRecord) -> Principal:
    return Principal(record.env_id, "sandbox", None, "sandbox:" + record.id, record.id)


def _git_sha() -> str:
    if sha := os.environ.get("AGENTPLEX_GIT_SHA"):
        return sha
    source = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=2,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"
