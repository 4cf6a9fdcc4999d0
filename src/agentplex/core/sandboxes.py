"""The sandbox control plane: sandbox records over the `SandboxBackend` port.

The backend owns processes; this service owns what the API promises: records that survive
restarts (a sandbox that was running comes back ``stopped``), data-plane tokens, timeouts that
are enforced, and the one gate to every sandbox's data plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from agentplex.core.clock import new_id, utcnow
from agentplex.core.ports import (
    DataPlaneResponse,
    DataPlaneSocket,
    Resources,
    SandboxBackend,
    Template,
)
from agentplex.core.sandbox_tokens import IssuedToken, SandboxTokens
from agentplex.core.templates import TemplateService
from agentplex.db.engine import Database
from agentplex.db.records import sandboxes as records
from agentplex.envvars import EnvVarsInvalid, check_env
from agentplex.errors import (
    BadRequest,
    ResourceLimit,
    SandboxNotFound,
    SandboxStateConflict,
    TemplateNotFound,
)
from agentplex.settings import SandboxSettings

log = logging.getLogger("agentplex.sandboxes")

LIVE_STATES = ("creating", "running", "paused")
_RESTARTED = "the server restarted; start the sandbox to use it again"


@dataclass(frozen=True, slots=True)
class SandboxRecord:
    """What the control plane knows of a sandbox."""

    id: str
    env_id: str
    template_id: str
    template_name: str
    status: str  # creating, running, paused or stopped
    status_reason: str | None
    isolation: str
    internet_access: bool
    timeout_seconds: int | None
    resources: Resources
    env_vars: dict[str, str]
    expires_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> SandboxRecord:
        return cls(
            id=row["id"],
            env_id=row["env_id"],
            template_id=row["template_id"],
            template_name=row["template_name"],
            status=row["status"],
            status_reason=row["status_reason"],
            isolation=row["isolation"],
            internet_access=bool(row["internet_access"]),
            timeout_seconds=row["timeout_seconds"],
            resources=Resources.from_json(row["resources"]),
            env_vars=dict(row["env_vars"]),
            expires_at=row["expires_at"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


class SandboxService:
    """Create, inspect and drive the sandboxes of each environment."""

    def __init__(
        self,
        db: Database,
        backend: SandboxBackend,
        templates: TemplateService,
        tokens: SandboxTokens,
        settings: SandboxSettings,
    ) -> None:
        self.db = db
        self.backend = backend
        self.templates = templates
        self.tokens = tokens
        self.settings = settings
        self._sweeper: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()
        # sandbox id -> environment: a sandbox never changes environment, so the data-plane
        # gate need not read its record on every request
        self._env_of: dict[str, str] = {}
        # environment -> sandboxes being created or started whose record is not live yet: the
        # backend takes seconds, and concurrent requests must not all pass the limit check
        self._pending: dict[str, int] = {}
        self._limit_lock = asyncio.Lock()

    async def start(self) -> None:
        """Reconcile records with reality after a restart, then enforce timeouts."""
        async with self.db.write() as conn:
            for row in await records.with_status(conn, LIVE_STATES):
                values = {"status": "stopped", "status_reason": _RESTARTED, "expires_at": None}
                await records.update_fields(conn, row["id"], {**values, "updated_at": utcnow()})
        self.backend.on_exit(self._on_exit)
        self._sweeper = asyncio.create_task(self._sweep(), name="sandbox-sweeper")

    async def close(self) -> None:
        tasks = [t for t in (self._sweeper, *self._writes) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _on_exit(self, sandbox_id: str, reason: str) -> None:
        """A sandbox stopped on its own (crash, out of memory): its record says so."""

        async def write() -> None:
            async with self.db.write() as conn:
                values = {"status": "stopped", "status_reason": reason, "expires_at": None}
                await records.update_fields(conn, sandbox_id, {**values, "updated_at": utcnow()})

        task = asyncio.get_running_loop().create_task(write())
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    # -- lifecycle ---------------------------------------------------------------------------

    async def create(
        self,
        env_id: str,
        *,
        template: str | None,
        timeout_seconds: int | None,
        internet_access: bool,
        env_vars: dict[str, str],
    ) -> tuple[SandboxRecord, IssuedToken]:
        """A new running sandbox and its first data-plane token (shown once). BadRequest for
        ``env_vars`` no process could start with (NUL, '=' in a name, past agentplex.envvars'
        bounds): stored, they would break every command of the sandbox, restarts included."""
        try:
            env_vars = check_env(env_vars)
        except EnvVarsInvalid as exc:
            raise BadRequest(f"Invalid env_vars: {exc}") from None
        chosen = await self.templates.resolve(env_id, template)
        timeout = self._timeout(timeout_seconds)
        return await self._create(env_id, chosen, timeout, internet_access, env_vars)

    async def _create(
        self,
        env_id: str,
        chosen: Template,
        timeout_s: int | None,
        internet_access: bool,
        env_vars: dict[str, str],
    ) -> tuple[SandboxRecord, IssuedToken]:
        sandbox_id = "sbx_" + new_id().replace("-", "")[:20]
        await self.backend.create(
            sandbox_id, chosen, env_vars=env_vars, internet_access=internet_access
        )
        now = utcnow()
        row = {
            "id": sandbox_id,
            "env_id": env_id,
            "template_id": chosen.id,
            "template_name": chosen.name,
            "status": "running",
            "status_reason": None,
            "isolation": self.backend.isolation.kind,
            "internet_access": internet_access,
            "timeout_seconds": timeout_s,
            "resources": chosen.resources.to_json(),
            "env_vars": env_vars,
            "expires_at": now + timedelta(seconds=timeout_s) if timeout_s else None,
            "created_at": now,
            "updated_at": now,
        }
        try:
            async with self.db.write() as conn:
                # counted in the transaction that adds the record (writes are serialised), not
                # in a read of its own before: that costs every create a round trip, and at the
                # limit the sandbox just started is removed again
                self._check_limit(env_id, await self._live_count(conn, env_id))
                await records.insert(conn, row)
                token = await self.tokens.issue(env_id, sandbox_id, conn)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.backend.delete(sandbox_id)
            raise
        self._env_of[sandbox_id] = env_id
        return SandboxRecord.from_row(row), token

    @contextlib.asynccontextmanager
    async def _live_slot(self, env_id: str) -> AsyncIterator[None]:
        """Hold one of the environment's ``max_per_environment`` live sandboxes while one is
        created or started. ResourceLimit (403) when they are all taken."""
        async with self._limit_lock:
            async with self.db.read() as conn:
                live = await self._live_count(conn, env_id)
            self._check_limit(env_id, live + self._pending.get(env_id, 0))
            self._pending[env_id] = self._pending.get(env_id, 0) + 1
        try:
            yield
        finally:
            if (left := self._pending[env_id] - 1) > 0:
                self._pending[env_id] = left
            else:
                del self._pending[env_id]

    async def _live_count(self, conn: Any, env_id: str) -> int:
        """The environment's live sandboxes. With SQLite one process runs them all, so its
        own count is exact and costs no query on the create path; with PostgreSQL other
        replicas run some, and the records are counted."""
        if self.db.is_sqlite:
            return sum(1 for sid in self.backend.sandbox_ids() if self._env_of.get(sid) == env_id)
        return await records.count(conn, env_id, LIVE_STATES)

    def _check_limit(self, env_id: str, current: int) -> None:
        """ResourceLimit (403) when ``current`` live sandboxes fill the environment's share."""
        limit = self.settings.max_per_environment
        if current >= limit:
            raise ResourceLimit(
                f"Sandbox limit reached: this environment has {current} live sandboxes "
                f"(limit {limit}); stop or delete one first",
                limit=limit,
                current=current,
            )

    def _timeout(self, requested: int | None) -> int | None:
        if requested is None:
            return self.settings.default_timeout_seconds or None
        if requested < 0 or requested > self.settings.max_timeout_seconds:
            raise BadRequest(
                f"timeout_seconds must be between 0 and {self.settings.max_timeout_seconds}"
            )
        return requested or None

    async def get(self, env_id: str, sandbox_id: str) -> SandboxRecord:
        """The sandbox, if it belongs to environment ``env_id`` (else SandboxNotFound)."""
        async with self.db.read() as conn:
            row = await records.get(conn, env_id, sandbox_id)
        if row is None:
            raise SandboxNotFound(f"Sandbox {sandbox_id} not found")
        return SandboxRecord.from_row(row)

    async def check_owner(self, env_id: str, sandbox_id: str) -> None:
        """Raise SandboxNotFound unless the sandbox belongs to environment ``env_id``."""
        if self._env_of.get(sandbox_id) != env_id:
            await self.get(env_id, sandbox_id)
            self._env_of[sandbox_id] = env_id

    async def page(
        self, env_id: str, *, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[SandboxRecord], str | None]:
        """Newest first, and the cursor of the next page (None at the end)."""
        async with self.db.read() as conn:
            rows, next_cursor = await records.page(
                conn, env_id, status=status, limit=limit, cursor=cursor
            )
        return [SandboxRecord.from_row(r) for r in rows], next_cursor

    async def delete(self, env_id: str, sandbox_id: str) -> None:
        """Remove the sandbox, its files and its tokens."""
        record = await self.get(env_id, sandbox_id)
        await self.backend.delete(record.id)
        async with self.db.write() as conn:
            await records.remove(conn, record.id)
        self._env_of.pop(record.id, None)
        self.tokens.forget(record.id)

    async def stop(self, env_id: str, sandbox_id: str, reason: str | None = None) -> SandboxRecord:
        """End the sandbox's processes; its files stay."""
        record = await self.get(env_id, sandbox_id)
        if record.status != "stopped":
            await self.backend.stop(record.id)
        return await self._set(record, status="stopped", status_reason=reason, expires_at=None)

    async def start_sandbox(self, env_id: str, sandbox_id: str) -> SandboxRecord:
        """Start a stopped sandbox again, its timeout counted afresh."""
        record = await self.get(env_id, sandbox_id)
        if record.status == "running":
            return record
        if record.status != "stopped":
            raise SandboxStateConflict(f"Sandbox {sandbox_id} is {record.status}; resume it")
        try:
            template = await self.templates.resolve(env_id, record.template_id)
        except TemplateNotFound:
            raise SandboxStateConflict(
                f"Sandbox {sandbox_id}'s template {record.template_name!r} no longer exists"
            ) from None
        async with self._live_slot(env_id):
            await self.backend.start(
                record.id,
                template,
                env_vars=record.env_vars,
                internet_access=record.internet_access,
            )
            expires = (
                utcnow() + timedelta(seconds=record.timeout_seconds)
                if record.timeout_seconds
                else None
            )
            self._env_of[record.id] = env_id
            return await self._set(record, status="running", status_reason=None, expires_at=expires)

    async def pause(self, env_id: str, sandbox_id: str) -> SandboxRecord:
        record = await self.get(env_id, sandbox_id)
        if record.status != "running":
            raise SandboxStateConflict(
                f"Sandbox {sandbox_id} is {record.status}; only a running sandbox can be paused"
            )
        await self.backend.pause(record.id)
        return await self._set(record, status="paused")

    async def resume(self, env_id: str, sandbox_id: str) -> SandboxRecord:
        record = await self.get(env_id, sandbox_id)
        if record.status != "paused":
            raise SandboxStateConflict(
                f"Sandbox {sandbox_id} is {record.status}; only a paused sandbox can be resumed"
            )
        await self.backend.resume(record.id)
        return await self._set(record, status="running")

    async def set_timeout(
        self, env_id: str, sandbox_id: str, timeout_seconds: int
    ) -> SandboxRecord:
        """A new lifetime counted from now (0: none); a stopped sandbox keeps it for start."""
        record = await self.get(env_id, sandbox_id)
        timeout = self._timeout(timeout_seconds)
        expires = utcnow() + timedelta(seconds=timeout) if timeout else None
        if record.status == "stopped":
            expires = None
        return await self._set(record, timeout_seconds=timeout, expires_at=expires)

    async def refresh_token(
        self, env_id: str, sandbox_id: str
    ) -> tuple[SandboxRecord, IssuedToken]:
        """Another data-plane token; the earlier ones stay valid until their own expiry."""
        record = await self.get(env_id, sandbox_id)
        return record, await self.tokens.issue(env_id, record.id)

    async def _set(self, record: SandboxRecord, **values: Any) -> SandboxRecord:
        async with self.db.write() as conn:
            await records.update_fields(conn, record.id, {**values, "updated_at": utcnow()})
            row = await records.get(conn, record.env_id, record.id)
        if row is None:
            raise SandboxNotFound(f"Sandbox {record.id} not found")
        return SandboxRecord.from_row(row)

    # -- data plane --------------------------------------------------------------------------

    async def request(
        self,
        sandbox_id: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> DataPlaneResponse:
        """One request to a running sandbox's data plane (the caller checked ownership)."""
        return await self.backend.request(
            sandbox_id,
            method,
            path,
            json=json,
            params=params,
            content=content,
            headers=headers,
            timeout=timeout,
        )

    def websocket(
        self, sandbox_id: str, path: str, *, headers: Mapping[str, str] | None = None
    ) -> AbstractAsyncContextManager[DataPlaneSocket]:
        """A WebSocket to a running sandbox's data plane (the caller checked ownership)."""
        return self.backend.websocket(sandbox_id, path, headers=headers)

    # -- housekeeping ------------------------------------------------------------------------

    async def _sweep(self) -> None:
        """Stop sandboxes whose timeout passed; now and then, delete expired tokens."""
        rounds = 0
        while True:
            await asyncio.sleep(self.settings.sweep_seconds)
            rounds += 1
            try:
                async with self.db.read() as conn:
                    due = [SandboxRecord.from_row(r) for r in await records.expired(conn, utcnow())]
                for record in due:
                    log.info("sandbox %s timed out; stopping it", record.id)
                    await self.stop(record.env_id, record.id, reason="timeout expired")
                if rounds % 600 == 1:
                    await self.tokens.prune()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sandbox sweep failed")
