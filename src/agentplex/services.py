"""The running server's services, built once from the settings and shared by every surface.

`build_services` constructs everything in dependency order, each collaborator passed in at
construction; `Services.start` brings them up in that order and `Services.stop` takes them down
in the reverse one. Routes reach services through ``call.services``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from agentplex import __version__
from agentplex.bus import Bus, create_bus
from agentplex.core import environments
from agentplex.core.auth import Authenticator
from agentplex.core.blobs import create_blob_store
from agentplex.core.builds import ArchiveLimits, BuildService, read_archive
from agentplex.core.callbacks import Callbacks
from agentplex.core.clock import utcnow
from agentplex.core.health import HealthService
from agentplex.core.logs import LogStore, configure_logging
from agentplex.core.ports import BlobStore, ModelProvider, RunExecutor, SandboxBackend
from agentplex.core.projects import ProjectService
from agentplex.core.runs import RunService
from agentplex.core.sandbox_tokens import SandboxTokens
from agentplex.core.sandboxes import SandboxService
from agentplex.core.secrets import MasterKey, SecretService
from agentplex.core.session_events import SessionEventLog
from agentplex.core.sessions import SessionService
from agentplex.core.streams import StreamStore
from agentplex.core.templates import TemplateService
from agentplex.db import migrate
from agentplex.db.engine import Database
from agentplex.engine.queue import RunQueue
from agentplex.engine.scheduler import Scheduler
from agentplex.engine.worker import Sweeper, UnavailableExecutor, Worker
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
        engine: RunEngine,
        runs: RunService,
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
        self.engine = engine
        self.queue = engine.queue
        self.scheduler = engine.scheduler
        self.executor = engine.executor
        self.workers = engine.workers
        self.runs = runs
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
        await self.engine.start(scheduler=self.settings.runs.scheduler)
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
        await self.engine.stop()
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


class RunEngine:
    """The run engine of a process: the queue, the sweeper, the scheduler (when asked for)
    and the workers (when it has slots), started and stopped together."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        streams: StreamStore,
        secrets: SecretService,
        executor: RunExecutor,
        *,
        workers: int | None = None,
    ) -> None:
        config = settings.runs
        self.settings = config
        self.queue = RunQueue(
            db, backoff_base=config.backoff_base_seconds, backoff_max=config.backoff_max_seconds
        )
        self.scheduler = Scheduler(db, on_enqueued=self.queue.notify)
        self.sweeper = Sweeper(db, streams, self.queue, config)
        self.executor = executor
        slots = config.workers if workers is None else workers
        self.workers: Worker | None = (
            Worker(self.queue, streams, db, secrets, executor, config, slots=slots)
            if slots > 0
            else None
        )
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, *, scheduler: bool) -> None:
        """Listen for notifications, then start the sweeper, the scheduler (``scheduler``)
        and the workers."""
        self._stop.clear()
        await self.queue.start()
        self._tasks.append(asyncio.create_task(self.sweeper.run(self._stop), name="run-sweeper"))
        if scheduler:
            self._tasks.append(
                asyncio.create_task(self.scheduler.run(self._stop), name="run-scheduler")
            )
        if self.workers is not None:
            await self.workers.start()
        log.info(
            "run engine: %d worker slots, scheduler %s, lease %g s, sweep every %g s",
            self.workers.slots if self.workers is not None else 0,
            "on" if scheduler else "off",
            self.settings.lease_seconds,
            self.settings.sweep_seconds,
        )

    async def stop(self) -> None:
        """Stop in the reverse order; running runs get the settings' grace period."""
        if self.workers is not None:
            await self.workers.stop()
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 5)
        self._tasks = []
        await self.queue.close()
        with contextlib.suppress(Exception):
            await self.executor.close()

    async def deployed(self, build: Any, replaced: str | None) -> None:
        """A deploy in this process: tick the scheduler now, drop the replaced build's
        warm sandboxes."""
        self.scheduler.notify()
        if replaced is not None and replaced != build.build_id:
            await self.executor.forget_build(replaced)

    def status(self) -> dict[str, Any]:
        return {
            "workers": self.workers.status() if self.workers is not None else None,
            "executor": self.executor.status(),
        }


def run_executor(
    settings: Settings,
    backend: SandboxBackend,
    load_archive: Callable[[str, str], Awaitable[bytes]],
) -> RunExecutor:
    """The executor of runs: warm sandboxes of the builds, or, without sandboxes, one that
    fails every run saying why."""
    if not settings.sandbox.enabled:
        return UnavailableExecutor(
            "runs execute in sandboxes, and this server has them disabled "
            "(sandbox.enabled = false): enable them to run handlers"
        )
    from agentplex.engine.executor import SandboxRunExecutor

    return SandboxRunExecutor(backend, settings.runs, load_archive)


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
    streams = StreamStore(db, bus, settings.streams.ring_size)
    secrets = SecretService(db, master_key)
    executor = run_executor(settings, backend, functools.partial(read_archive, db, blobs))
    engine = RunEngine(settings, db, streams, secrets, executor)
    builds = BuildService(
        db,
        blobs,
        ArchiveLimits.from_settings(settings.server),
        discover=executor.discover if settings.sandbox.enabled else None,
        on_deployed=engine.deployed,
    )
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
        streams=streams,
        auth=Authenticator(db, settings.auth, verifiers=[tokens]),
        sandbox_backend=backend,
        templates=templates,
        sandboxes=sandboxes,
        callbacks=Callbacks(allow_private=settings.sandbox.callback_allow_private),
        health=HealthService(db, bus, backend),
        sessions=sessions,
        projects=ProjectService(db, blobs),
        secrets=secrets,
        blobs=blobs,
        builds=builds,
        engine=engine,
        runs=RunService(
            db,
            engine.queue,
            streams,
            max_attempts=settings.runs.max_attempts,
            executor=engine.executor,
        ),
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


class WorkerNode:
    """`agentplex worker`: workers (and the sweeper, and the scheduler when asked for) of
    this process against the configured database, without HTTP. Its sandboxes live in a
    directory of their own under ``<data_dir>/workers`` (one per running worker process, so
    a worker beside `agentplex serve` on the same data directory never touches the server's),
    and the data directory stays hidden from them."""

    def __init__(self, settings: Settings, *, workers: int, scheduler: bool) -> None:
        self.settings = settings
        self.scheduler_enabled = scheduler
        self.logs = LogStore(settings.log.store_size)
        self.db = Database(
            settings.database_url,
            pool_size=settings.database.pool_size,
            busy_timeout_ms=settings.database.busy_timeout_ms,
            echo=settings.database.echo,
        )
        self.bus = create_bus(settings.bus.url)
        self.streams = StreamStore(self.db, self.bus, settings.streams.ring_size)
        master_key = MasterKey.load_or_create(settings.server.data_dir, settings.server.master_key)
        self.secrets = SecretService(self.db, master_key)
        self.blobs = create_blob_store(settings.server, self.db)
        self._lock: Any = None
        self.backend: SandboxBackend | None = None
        if settings.sandbox.enabled:
            sandbox_dir, self._lock = _worker_directory(settings.server.data_dir)
            from agentplex.sandbox import SandboxManager

            self.backend = SandboxManager(
                sandbox_dir,
                allow_unisolated=settings.sandbox.allow_unisolated,
                pool_size=settings.sandbox.pool_size,
                hidden_paths=[settings.server.data_dir.resolve()],
            )
        from agentplex.sandbox import DisabledBackend

        executor = run_executor(
            settings,
            self.backend or DisabledBackend(),
            functools.partial(read_archive, self.db, self.blobs),
        )
        self.engine = RunEngine(
            settings, self.db, self.streams, self.secrets, executor, workers=workers
        )

    async def start(self) -> None:
        configure_logging(self.logs, self.settings.log.level, self.settings.log.format)
        self.settings.server.ensure_data_dir()
        await migrate.upgrade(self.db)
        await self.bus.start()
        await self.engine.start(scheduler=self.scheduler_enabled)
        workers = self.engine.workers
        log.info(
            "agentplex worker %s started: %d slots, database %s%s",
            workers.worker_id if workers else "-",
            workers.slots if workers else 0,
            self.db.describe(),
            ", scheduler on" if self.scheduler_enabled else "",
        )

    async def stop(self) -> None:
        await self.engine.stop()
        if self.backend is not None:
            with contextlib.suppress(Exception):
                await self.backend.close()
        await self.bus.close()
        await self.db.dispose()
        if self._lock is not None:
            self._lock.close()
        log.info("agentplex worker stopped")


def _worker_directory(data_dir: Path) -> tuple[Path, Any]:
    """The first ``<data_dir>/workers/<n>`` no other live process holds, and the open lock
    file that holds it for this process (released when it is closed or the process dies)."""
    import fcntl

    root = data_dir / "workers"
    root.mkdir(parents=True, exist_ok=True)
    n = 0
    while True:
        lock = (root / f"{n}.lock").open("a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            n += 1
            continue
        return root / str(n), lock
