"""Health: what the server depends on, checked on demand (probes, ``/health``, ``/status``).

Each check answers None when its component is fine, or a one-line reason why it is not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from agentplex.bus import Bus
from agentplex.core.ports import SandboxBackend
from agentplex.db import migrate
from agentplex.db.engine import Database

CHECK_TIMEOUT_SECONDS = 2.0

Check = Callable[[], Awaitable[str | None]]


class HealthService:
    """The server's dependency checks: database (reachable and migrated), bus, sandboxes."""

    def __init__(self, db: Database, bus: Bus, backend: SandboxBackend) -> None:
        self.db = db
        self.bus = bus
        self.backend = backend
        self.ready = False  # set once the server has started, cleared when it stops

    async def database(self) -> str | None:
        try:
            current = await asyncio.wait_for(migrate.is_current(self.db), CHECK_TIMEOUT_SECONDS)
        except Exception as exc:
            return f"database unreachable: {type(exc).__name__}: {exc}"[:300]
        if not current:
            return f"database not migrated to revision {migrate.head_revision()}"
        return None

    async def bus_check(self) -> str | None:
        try:
            await asyncio.wait_for(self.bus.ping(), CHECK_TIMEOUT_SECONDS)
        except Exception as exc:
            return f"bus unreachable: {type(exc).__name__}: {exc}"[:300]
        return None

    async def sandboxes(self) -> str | None:
        return self.backend.problem()

    async def checks(self) -> dict[str, str | None]:
        """Every check by name: None when fine, else the reason."""
        names: dict[str, Check] = {
            "database": self.database,
            "bus": self.bus_check,
            "sandboxes": self.sandboxes,
        }
        results = await asyncio.gather(*(check() for check in names.values()))
        return dict(zip(names, results, strict=True))

    async def readiness(self) -> str | None:
        """Why the server cannot serve (starting, database, bus, the sandbox layer), or None
        when it can. The sandbox layer counts once it has failed: while it cannot make
        sandboxes (it failed to start, or a zygote died and is being restarted) a load balancer
        should send callers elsewhere. A host without isolation is a configuration, not a
        failure (it is shown in /status), and a layer not started yet is not a failure."""
        if not self.ready:
            return "server is starting"
        return await self.database() or await self.bus_check() or self.backend.problem()
