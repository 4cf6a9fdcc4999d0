"""The sandbox control plane: lifecycle of sandbox records over the sandbox manager.

The manager (``agentplex.sandbox``) owns processes; this service owns what the API promises:
records that survive restarts, per-sandbox data-plane tokens, timeouts that are enforced, and
errors in domain terms.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from agentplex.core import apikeys
from agentplex.core import sandbox_records as records
from agentplex.core.clock import aware, new_id, utcnow
from agentplex.core.sandbox_records import SandboxNotFound, SandboxRecord
from agentplex.core.templates import TemplateNotFound, TemplateService
from agentplex.db.engine import Database
from agentplex.errors import AgentplexError, BadRequest, Conflict, ServiceUnavailable
from agentplex.settings import SandboxSettings

if TYPE_CHECKING:
    from agentplex.sandbox import SandboxHandle, SandboxManager, Template

log = logging.getLogger("agentplex.sandboxes")

TOKEN_PREFIX = "sbt_"  # noqa: S105 - a prefix, not a secret
LIVE_STATES = ("creating", "running", "paused")


class SandboxStateConflict(Conflict):
    """The sandbox is not in a state that allows this."""

    surface_codes = {"hopx": "INVALID_STATE"}


class SandboxUnavailable(ServiceUnavailable):
    """Sandboxes are unavailable on this server."""

    surface_codes = {"hopx": "SANDBOX_UNAVAILABLE"}


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Sandbox-layer exceptions as domain errors."""
    from agentplex.sandbox import errors as sandbox_errors

    try:
        yield
    except AgentplexError:
        raise
    except sandbox_errors.TemplateNotFound as exc:
        raise TemplateNotFound(str(exc)) from exc
    except sandbox_errors.SandboxNotFound as exc:
        raise SandboxNotFound(str(exc)) from exc
    except (sandbox_errors.InvalidTransition, sandbox_errors.SandboxNotRunning) as exc:
        raise SandboxStateConflict(str(exc)) from exc
    except (sandbox_errors.IsolationUnavailable, sandbox_errors.SandboxStartFailed) as exc:
        raise SandboxUnavailable(str(exc)) from exc


class SandboxService:
    """Create, inspect and drive sandboxes of an environment."""

    def __init__(
        self,
        db: Database,
        manager: SandboxManager,
        settings: SandboxSettings,
        templates: TemplateService,
    ) -> None:
        self.db = db
        self.manager = manager
        self.templates = templates
        self.settings = settings
        self._sweeper: asyncio.Task[None] | None = None
        # sandbox id -> environment, for sandboxes of this process: a sandbox never changes
        # environment, so the data-plane proxy need not read its record on every request
        self._env_of: dict[str, str] = {}
        # told of every token issued (the authenticator pre-trusts it)
        self.on_token: Callable[[str, SandboxRecord], None] | None = None

    async def start(self) -> None:
        """Reconcile records with reality after a restart, then enforce timeouts."""
        async with self.db.write() as conn:
            for record in await records.with_status(conn, LIVE_STATES):
                await records.update_fields(
                    conn,
                    record.id,
                    status="stopped",
                    status_reason="the server restarted; start the sandbox to use it again",
                    expires_at=None,
                )
        self._sweeper = asyncio.create_task(self._sweep(), name="sandbox-timeouts")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    # -- lifecycle ---------------------------------------------------------------------------

    async def create(
        self,
        env_id: str,
        *,
        template: str | None,
        timeout_seconds: int | None,
        internet_access: bool,
        env_vars: dict[str, str],
    ) -> tuple[SandboxRecord, str]:
        """A new running sandbox and its data-plane token (shown once)."""
        chosen = await self.templates.resolve(env_id, template)
        timeout = self._timeout(timeout_seconds)
        sandbox_id = "sbx_" + new_id().replace("-", "")[:20]
        with translated():
            handle = await self.manager.create(
                chosen, env_vars=env_vars, internet_access=internet_access, sandbox_id=sandbox_id
            )
        now = utcnow()
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = SandboxRecord(
            id=sandbox_id,
            env_id=env_id,
            template_id=chosen.id,
            template_name=chosen.name,
            status="running",
            status_reason=None,
            isolation=str(getattr(handle, "isolation", "bubblewrap")),
            internet_access=internet_access,
            timeout_seconds=timeout,
            resources=_resources(chosen),
            env_vars=env_vars,
            token_hash=apikeys.hash_key(token),
            token_expires_at=now + timedelta(seconds=self.settings.token_ttl_seconds),
            expires_at=now + timedelta(seconds=timeout) if timeout else None,
            created_at=now,
            updated_at=now,
        )
        try:
            async with self.db.write() as conn:
                await records.insert(conn, record)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.manager.delete(sandbox_id)
            raise
        self._env_of[sandbox_id] = env_id
        if self.on_token is not None:
            self.on_token(token, record)
        return record, token

    def _timeout(self, requested: int | None) -> int | None:
        if requested is None:
            return self.settings.default_timeout_seconds or None
        if requested < 0 or requested > self.settings.max_timeout_seconds:
            raise BadRequest(
                f"timeout_seconds must be between 0 and {self.settings.max_timeout_seconds}"
            )
        return requested or None

    async def get(self, env_id: str, sandbox_id: str) -> SandboxRecord:
        async with self.db.read() as conn:
            return await records.get(conn, env_id, sandbox_id)

    async def check_owner(self, env_id: str, sandbox_id: str) -> None:
        """Raise SandboxNotFound unless the sandbox belongs to environment ``env_id``."""
        if self._env_of.get(sandbox_id) != env_id:
            await self.get(env_id, sandbox_id)
            self._env_of[sandbox_id] = env_id

    async def page(
        self, env_id: str, *, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[SandboxRecord], str | None]:
        async with self.db.read() as conn:
            return await records.page(conn, env_id, status=status, limit=limit, cursor=cursor)

    async def delete(self, env_id: str, sandbox_id: str) -> None:
        record = await self.get(env_id, sandbox_id)
        await self._open()  # the manager must know the sandbox to remove its files
        with translated(), contextlib.suppress(SandboxNotFound):
            await self.manager.delete(record.id)
        async with self.db.write() as conn:
            await records.delete(conn, record.id)
        self._env_of.pop(record.id, None)

    async def stop(self, env_id: str, sandbox_id: str, reason: str | None = None) -> SandboxRecord:
        record = await self.get(env_id, sandbox_id)
        if record.status != "stopped":
            with translated(), contextlib.suppress(SandboxNotFound):
                await self.manager.stop(record.id)
        return await self._set(record, status="stopped", status_reason=reason, expires_at=None)

    async def start_sandbox(self, env_id: str, sandbox_id: str) -> SandboxRecord:
        record = await self.get(env_id, sandbox_id)
        if record.status == "running":
            return record
        if record.status != "stopped":
            raise SandboxStateConflict(f"Sandbox {sandbox_id} is {record.status}; resume it")
        await self._open()
        with translated():
            await self.manager.start(record.id)
        expires = (
            utcnow() + timedelta(seconds=record.timeout_seconds) if record.timeout_seconds else None
        )
        return await self._set(record, status="running", status_reason=None, expires_at=expires)

    async def pause(self, env_id: str, sandbox_id: str) -> SandboxRecord:
        record = await self.get(env_id, sandbox_id)
        if record.status != "running":
            raise SandboxStateConflict(
                f"Sandbox {sandbox_id} is {record.status}; only a running sandbox can be paused"
            )
        with translated():
            await self.manager.pause(record.id)
        return await self._set(record, status="paused")

    async def resume(self, env_id: str, sandbox_id: str) -> SandboxRecord:
        record = await self.get(env_id, sandbox_id)
        if record.status != "paused":
            raise SandboxStateConflict(
                f"Sandbox {sandbox_id} is {record.status}; only a paused sandbox can be resumed"
            )
        with translated():
            await self.manager.resume(record.id)
        return await self._set(record, status="running")

    async def set_timeout(
        self, env_id: str, sandbox_id: str, timeout_seconds: int
    ) -> SandboxRecord:
        record = await self.get(env_id, sandbox_id)
        timeout = self._timeout(timeout_seconds)
        expires = utcnow() + timedelta(seconds=timeout) if timeout else None
        if record.status == "stopped":
            expires = None
        return await self._set(record, timeout_seconds=timeout, expires_at=expires)

    async def refresh_token(self, env_id: str, sandbox_id: str) -> tuple[SandboxRecord, str]:
        record = await self.get(env_id, sandbox_id)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        expires = utcnow() + timedelta(seconds=self.settings.token_ttl_seconds)
        updated = await self._set(
            record, token_hash=apikeys.hash_key(token), token_expires_at=expires
        )
        if self.on_token is not None:
            self.on_token(token, updated)
        return updated, token

    async def _set(self, record: SandboxRecord, **values: Any) -> SandboxRecord:
        async with self.db.write() as conn:
            await records.update_fields(conn, record.id, **values)
            return await records.get(conn, record.env_id, record.id)

    # -- data plane --------------------------------------------------------------------------

    async def by_token(self, token: str) -> SandboxRecord | None:
        """The sandbox a data-plane token belongs to, if it is valid and unexpired."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        digest = apikeys.hash_key(token)
        async with self.db.read() as conn:
            record = await records.by_token(conn, digest)
        if record is None or record.token_hash is None:
            return None
        if not hmac.compare_digest(record.token_hash, digest):
            return None
        if record.token_expires_at is not None and aware(record.token_expires_at) < utcnow():
            return None
        return record

    def handle(self, sandbox_id: str) -> SandboxHandle:
        """The running sandbox's handle, for proxying its data plane."""
        from agentplex.sandbox import errors as sandbox_errors

        try:
            return self.manager.get(sandbox_id)
        except sandbox_errors.SandboxNotFound:
            raise SandboxStateConflict(
                f"Sandbox {sandbox_id} is not running; start it first"
            ) from None

    async def _open(self) -> None:
        with translated():
            await self.manager.open()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_seconds)
            try:
                async with self.db.read() as conn:
                    due = await records.expired(conn, utcnow())
                for record in due:
                    log.info("sandbox %s timed out; stopping it", record.id)
                    await self.stop(record.env_id, record.id, reason="timeout expired")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sandbox timeout sweep failed")


def _resources(template: Template) -> dict[str, Any]:
    res = template.resources
    return {"vcpu": res.vcpu, "memory_mb": res.memory_mb, "disk_mb": res.disk_mb}
