"""The running server's services, built once from the settings and shared by every surface.

`build_services` constructs everything in dependency order, each collaborator passed in at
construction; `Services.start` brings them up in that order and `Services.stop` takes them down
in the reverse one. Routes reach services through ``call.services``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from agentplex import __version__
from agentplex.bus import Bus, create_bus
from agentplex.core import environments
from agentplex.core.auth import Authenticator
from agentplex.core.blobs import create_blob_store
from agentplex.core.builds import ArchiveLimits, BuildService
from agentplex.core.callbacks import Callbacks
from agentplex.core.clock import utcnow
from agentplex.core.health import HealthService
from agentplex.core.logs import LogStore, configure_logging
from agentplex.core.ports import BlobStore, ModelProvider, SandboxBackend
from agentplex.core.projects import ProjectService
from agentplex.core.sandbox_tokens import SandboxTokens
from agentplex.core.sandboxes import SandboxService
from agentplex.core.secrets import MasterKey, SecretService
from agentplex.core.session_events import SessionEventLog
from agentplex.core.sessions import SessionService
from agentplex.core.streams import StreamStore
from agentplex.core.templates import TemplateService
from agentplex.db import migrate
from agentplex.db.engine import Database
from agentplex.settings import Settings

log = logging.getLogger("agentplex.server")

_USAGE_FLUSH_SECONDS = 30.0


class Services:
    """Settings plus every service built from them."""

    def __init__(
        self,
        *,
        settings: Settings,
        logs: LogStore,
        db: Database,
        bus: Bus,
        streams: StreamStore,
        auth: Authenticator,
        sandbox_backend: SandboxBackend,
        templates: TemplateService,
        sandboxes: SandboxService,
        callbacks: Callbacks,
        health: HealthService,
        sessions: SessionService,
        projects: ProjectService,
        secrets: SecretService,
        blobs: BlobStore,
        builds: BuildService,
    ) -> None:
        self.settings = settings
        self.logs = logs
        self.db = db
        self.bus = bus
        self.streams = streams
        self.auth = auth
        self.sandbox_backend = sandbox_backend
        self.templates = templates
        self.sandboxes = sandboxes
        self.callbacks = callbacks
        self.health = health
        self.sessions = sessions
        self.projects = projects
        self.secrets = secrets
        self.blobs = blobs
        self.builds = builds
        self.version = __version__
        self.git_sha = _git_sha()
        self.started_at: datetime = utcnow()
        self.started_monotonic = time.monotonic()
        self.default_env_id = ""
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def uptime_seconds(self) -> float:
        return time.monotonic() - self.started_monotonic

    @property
    def ready(self) -> bool:
        return self.health.ready

    async def start(self) -> None:
        """Migrate the database, connect the bus, then start every service, in that order."""
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
        self._log_isolation()
        await self.templates.start()
        await self.sandboxes.start()
        await self.sessions.start()
        if self.settings.sandbox.enabled and self.settings.sandbox.warm_on_start:
            self._tasks.append(asyncio.create_task(self._open_sandboxes(), name="sandbox-open"))
        self.health.ready = True
        log.info(
            "agentplex %s started: database %s, bus %s",
            self.version,
            self.db.describe(),
            self.settings.bus.url.split("@")[-1],
        )

    def _log_isolation(self) -> None:
        isolation = self.sandbox_backend.isolation
        if self.settings.sandbox.enabled and not isolation.isolated:
            log.warning(
                "SANDBOX ISOLATION UNAVAILABLE: %s. Sandboxes are %s.",
                isolation.reason,
                "run WITHOUT isolation (sandbox.allow_unisolated)"
                if self.settings.sandbox.allow_unisolated
                else "refused until bubblewrap works or sandbox.allow_unisolated is set",
            )

    async def _open_sandboxes(self) -> None:
        try:
            await self.sandbox_backend.open()
        except Exception:
            log.exception("could not start the sandbox layer; sandbox requests will retry")

    async def stop(self) -> None:
        """Stop every service, in the reverse order of `start`."""
        self.health.ready = False
        await self.callbacks.close()
        await self.sessions.close()
        await self.sandboxes.close()
        await self.templates.close()
        with contextlib.suppress(Exception):
            await self.sandbox_backend.close()
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


def sandbox_backend(settings: Settings) -> SandboxBackend:
    """The adapter the settings name: the bubblewrap manager, or none at all."""
    from agentplex.sandbox import DisabledBackend, SandboxManager

    config = settings.sandbox
    if not config.enabled:
        return DisabledBackend()
    return SandboxManager(
        settings.server.data_dir,
        allow_unisolated=config.allow_unisolated,
        pool_size=config.pool_size,
    )


def model_providers(settings: Settings) -> tuple[ModelProvider, ...]:
    """The model providers the settings configure (and the scripted one, when asked for)."""
    from agentplex.agent.providers import build_providers

    providers = tuple(build_providers(settings.agent))
    if settings.agent.scripted_model:
        from agentplex.agent.scripted import ScriptedProvider

        providers = (*providers, ScriptedProvider())
    return providers


def build_services(
    settings: Settings,
    backend: SandboxBackend | None = None,
    providers: Sequence[ModelProvider] | None = None,
) -> Services:
    """Every service, each given its collaborators; ``backend`` replaces the configured
    sandbox adapter (tests pass the in-memory one), ``providers`` the configured models."""
    from agentplex.agent.tools import SandboxTools

    db = Database(
        settings.database_url,
        pool_size=settings.database.pool_size,
        busy_timeout_ms=settings.database.busy_timeout_ms,
        echo=settings.database.echo,
    )
    bus = create_bus(settings.bus.url)
    backend = backend if backend is not None else sandbox_backend(settings)
    tokens = SandboxTokens(db, settings.sandbox.token_ttl_seconds)
    templates = TemplateService(db, backend, settings.sandbox)
    sandboxes = SandboxService(db, backend, templates, tokens, settings.sandbox)
    # secrets are sealed with a key derived from this one (MasterKeyError: refuse to start)
    master_key = MasterKey.load_or_create(settings.server.data_dir, settings.server.master_key)
    blobs = create_blob_store(settings.server, db)
    sessions = SessionService(
        db,
        sandboxes,
        settings.agent,
        providers if providers is not None else model_providers(settings),
        [SandboxTools(backend)],
        SessionEventLog(settings.streams.session_ring_size),
    )
    return Services(
        settings=settings,
        logs=LogStore(settings.log.store_size),
        db=db,
        bus=bus,
        streams=StreamStore(db, bus, settings.streams.ring_size),
        auth=Authenticator(db, settings.auth, verifiers=[tokens]),
        sandbox_backend=backend,
        templates=templates,
        sandboxes=sandboxes,
        callbacks=Callbacks(allow_private=settings.sandbox.callback_allow_private),
        health=HealthService(db, bus, backend),
        sessions=sessions,
        projects=ProjectService(db),
        secrets=SecretService(db, master_key),
        blobs=blobs,
        builds=BuildService(db, blobs, ArchiveLimits.from_settings(settings.server)),
    )


def _git_sha() -> str:
    if sha := os.environ.get("AGENTPLEX_GIT_SHA"):
        return sha
    source = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            timeout=2,
            text=True,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"
