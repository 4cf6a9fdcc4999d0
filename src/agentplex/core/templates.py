"""Sandbox templates: the backend's built-ins, and custom templates built from a built-in plus
setup commands into a layer of their own (built once, then seen read-only by every sandbox of
the template).

This is the one place a template reference (an id or a name, or nothing) becomes a `Template`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agentplex.core.clock import aware, new_id, utcnow
from agentplex.core.ports import DEFAULT_TEMPLATE, Resources, SandboxBackend, Template
from agentplex.db.engine import Database
from agentplex.db.records import sandboxes as sandbox_records
from agentplex.db.records import templates as records
from agentplex.envvars import EnvVarsInvalid, check_env
from agentplex.errors import (
    BadRequest,
    Conflict,
    ResourceLimit,
    TemplateNotFound,
    TemplateNotReady,
)
from agentplex.settings import SandboxSettings

log = logging.getLogger("agentplex.templates")

STEP_TIMEOUT_SECONDS = 900.0
_LOG_LIMIT = 1_000_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Other names the Hopx SDKs' documentation uses for built-in templates.
ALIASES = {"code-interpreter": "python", "python3": "python", "nodejs": "node", "golang": "go"}


@dataclass(frozen=True, slots=True)
class BuildStep:
    """One setup command and the directory it runs in."""

    command: str
    workdir: str = "/workspace"


@dataclass(frozen=True, slots=True)
class BuildRequest:
    """What to build: a custom template ``name`` from the built-in ``base``."""

    name: str
    base: str
    steps: list[BuildStep]
    env: dict[str, str] = field(default_factory=dict)
    display_name: str | None = None
    vcpu: float | None = None
    memory_mb: int | None = None
    disk_mb: int | None = None
    replace: bool = False  # replace a template of the same name


@dataclass(frozen=True, slots=True)
class CustomTemplate:
    """A custom template of an environment and the state of its build."""

    id: str
    env_id: str
    name: str
    display_name: str
    base_template: str
    language: str
    status: str  # building, active or failed
    steps: list[BuildStep]
    env: dict[str, str]
    resources: Resources
    logs: str
    error_message: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None

    @property
    def steps_started(self) -> int:
        """How many steps the build has begun (each logs a ``Step i/n`` line)."""
        return self.logs.count("Step ")

    @property
    def build_duration_ms(self) -> int | None:
        if self.started_at is None or self.completed_at is None:
            return None
        return int((aware(self.completed_at) - aware(self.started_at)).total_seconds() * 1000)

    def template(self, *, building: bool = False) -> Template:
        """The template its sandboxes are made from (the build's own, with a writable layer)."""
        return Template(
            id=self.id,
            name=self.name,
            display_name=self.display_name,
            language=self.language,
            resources=self.resources,
            description=f"Built from {self.base_template}",
            builtin=False,
            layer_id=self.id,
            layer_writable=building,
            env=tuple(sorted(self.env.items())),
        )

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> CustomTemplate:
        return cls(
            id=row["id"],
            env_id=row["env_id"],
            name=row["name"],
            display_name=row["display_name"],
            base_template=row["base_template"],
            language=row["language"],
            status=row["status"],
            steps=[BuildStep(s["command"], s["workdir"]) for s in row["steps"]],
            env=dict(row["env"]),
            resources=Resources.from_json(row["resources"]),
            logs=row["logs"],
            error_message=row["error_message"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            completed_at=row["completed_at"],
        )


class TemplateService:
    """Resolves, lists, builds and deletes the templates of each environment."""

    def __init__(
        self, db: Database, backend: SandboxBackend, settings: SandboxSettings | None = None
    ) -> None:
        self.db = db
        self.backend = backend
        self.max_builds = (settings or SandboxSettings()).max_builds_per_environment
        self._builds: set[asyncio.Task[None]] = set()
        # held from counting an environment's builds to inserting the new one, so concurrent
        # requests cannot all pass the limit
        self._build_lock = asyncio.Lock()

    async def start(self) -> None:
        """Builds cut short by a restart are failed."""
        async with self.db.write() as conn:
            await records.fail_unfinished(
                conn, "the server restarted during the build; build it again", utcnow()
            )

    async def close(self) -> None:
        for task in list(self._builds):
            task.cancel()
        for task in list(self._builds):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- reading -----------------------------------------------------------------------------

    def builtins(self) -> list[Template]:
        return self.backend.builtin_templates()

    def _builtin(self, ref: str) -> Template | None:
        ref = ALIASES.get(ref, ref)
        return next((t for t in self.builtins() if ref in (t.id, t.name)), None)

    async def _find(self, env_id: str, ref: str) -> CustomTemplate | None:
        async with self.db.read() as conn:
            row = await records.find(conn, env_id, ref)
        return CustomTemplate.from_row(row) if row else None

    async def custom(self, env_id: str) -> list[CustomTemplate]:
        """The environment's custom templates, oldest first."""
        async with self.db.read() as conn:
            return [CustomTemplate.from_row(r) for r in await records.of_env(conn, env_id)]

    async def get(self, env_id: str, ref: str) -> Template | CustomTemplate:
        """A built-in template, or one of the environment's custom ones, by id or name."""
        if (builtin := self._builtin(ref)) is not None:
            return builtin
        found = await self._find(env_id, ref)
        if found is None:
            raise TemplateNotFound(f"Template {ref!r} not found")
        return found

    async def build_record(self, env_id: str, ref: str) -> CustomTemplate:
        """A custom template with its build's state and logs."""
        found = await self._find(env_id, ref)
        if found is None:
            raise TemplateNotFound(f"Build {ref!r} not found")
        return found

    async def resolve(self, env_id: str, ref: str | None) -> Template:
        """The template a sandbox of ``env_id`` is made from; ``None`` is the default."""
        name = ref or DEFAULT_TEMPLATE
        if (builtin := self._builtin(name)) is not None:
            return builtin
        found = await self._find(env_id, name)
        if found is None:
            available = sorted(t.name for t in self.builtins())
            raise TemplateNotFound(f"Template {name!r} not found; built in: {', '.join(available)}")
        if found.status != "active":
            reason = f": {found.error_message}" if found.error_message else ""
            raise TemplateNotReady(f"Template {found.name!r} is {found.status}{reason}")
        return found.template()

    # -- building ----------------------------------------------------------------------------

    async def build(self, env_id: str, request: BuildRequest) -> CustomTemplate:
        """Start building a template; answers at once, the build goes on in the background."""
        if not self.backend.builds_layers:
            raise TemplateNotReady(
                "Custom templates need sandbox isolation (bubblewrap), which is unavailable here"
            )
        if not _NAME.match(request.name):
            raise BadRequest(
                f"Invalid template name {request.name[:120]!r}: use 1-100 letters, digits, '.',"
                " '_' or '-', starting with a letter or digit"
            )
        if self._builtin(request.name) is not None:
            raise Conflict(f"{request.name!r} names a built-in template; choose another name")
        try:
            check_env(request.env)
        except EnvVarsInvalid as exc:
            raise BadRequest(f"Invalid ENV step: {exc}") from None
        base = self._builtin(request.base)
        if base is None:
            if await self._find(env_id, request.base) is not None:
                raise BadRequest("A template can only be built from a built-in template")
            available = ", ".join(sorted(t.name for t in self.builtins()))
            raise TemplateNotFound(
                f"Base template {request.base!r} not found; built in: {available}"
            )
        # checked before a replaced template is deleted too, so a refused build changes nothing
        await self._check_build_limit(env_id)
        existing = await self._find(env_id, request.name)
        if existing is not None:
            if not request.replace:
                raise Conflict(f"Template {request.name!r} exists; delete it or send update=true")
            await self.delete(env_id, existing.id)
        template_id = "tpl_" + new_id().replace("-", "")[:20]
        resources = Resources(
            vcpu=request.vcpu if request.vcpu is not None else base.resources.vcpu,
            memory_mb=request.memory_mb or base.resources.memory_mb,
            disk_mb=request.disk_mb or base.resources.disk_mb,
        )
        now = utcnow()
        row: dict[str, Any] = {
            "id": template_id,
            "env_id": env_id,
            "name": request.name,
            "display_name": request.display_name or request.name,
            "base_template": base.id,
            "language": base.language,
            "status": "building",
            "steps": [{"command": s.command, "workdir": s.workdir} for s in request.steps],
            "env": dict(request.env),
            "resources": resources.to_json(),
            "logs": "",
            "error_message": None,
            "created_at": now,
            "started_at": now,
            "completed_at": None,
        }
        async with self._build_lock:
            await self._check_build_limit(env_id)
            async with self.db.write() as conn:
                await records.insert(conn, row)
        record = CustomTemplate.from_row(row)
        task = asyncio.create_task(self._run(record), name=f"template-build-{template_id}")
        self._builds.add(task)
        task.add_done_callback(self._builds.discard)
        return record

    async def _check_build_limit(self, env_id: str) -> None:
        """ResourceLimit (403) when the environment runs ``max_builds_per_environment`` builds."""
        async with self.db.read() as conn:
            building = sum(r["status"] == "building" for r in await records.of_env(conn, env_id))
        if building >= self.max_builds:
            raise ResourceLimit(
                f"Build limit reached: this environment has {building} template builds running "
                f"(limit {self.max_builds}); wait for one to finish",
                limit=self.max_builds,
                current=building,
            )

    async def _run(self, record: CustomTemplate) -> None:
        build_id = "bld_" + new_id().replace("-", "")[:20]
        logs: list[str] = []
        error: str | None = None
        try:
            await self.backend.create(
                build_id, record.template(building=True), env_vars={}, internet_access=True
            )
            total = len(record.steps)
            for index, step in enumerate(record.steps, start=1):
                logs.append(f"Step {index}/{total}: RUN {step.command}\n")
                await self._save_logs(record.id, logs)
                error = await self._step(build_id, index, step, logs)
                if error is not None:
                    logs.append(f"ERROR: {error}\n")
                    break
        except asyncio.CancelledError:
            error = "the build was cancelled (server shutting down)"
            raise
        except Exception as exc:
            log.exception("template build %s failed", record.id)
            error = f"the build sandbox failed: {exc}"
            logs.append(f"ERROR: {error}\n")
        finally:
            with contextlib.suppress(Exception):
                await self.backend.delete(build_id)
            await self._finish(record, logs, error)

    async def _step(
        self, build_id: str, index: int, step: BuildStep, logs: list[str]
    ) -> str | None:
        """Run one step; its output goes to ``logs``; the error that failed it, if one did."""
        answer = await self.backend.request(
            build_id,
            "POST",
            "/commands/run",
            json={
                "command": step.command,
                "workdir": step.workdir,
                "timeout": STEP_TIMEOUT_SECONDS,
            },
            timeout=STEP_TIMEOUT_SECONDS + 30,
        )
        try:
            result = json.loads(answer.body or b"{}")
        except ValueError:
            result = {"message": answer.body[:500].decode(errors="replace")}
        output = str(result.get("stdout", "")) + str(result.get("stderr", ""))
        details = result.get("details") or {}
        if isinstance(details, dict):
            output += str(details.get("stdout", "")) + str(details.get("stderr", ""))
        logs.append(output if output.endswith("\n") or not output else output + "\n")
        exit_code = result.get("exit_code")
        if answer.status < 400 and exit_code in (0, None):
            return None
        reason = result.get("message") or f"exit code {exit_code}"
        return f"step {index} `{step.command}` failed ({reason}):\n{output[-4000:]}"

    async def _save_logs(self, template_id: str, logs: list[str]) -> None:
        async with self.db.write() as conn:
            await records.update_fields(conn, template_id, {"logs": "".join(logs)[-_LOG_LIMIT:]})

    async def _finish(self, record: CustomTemplate, logs: list[str], error: str | None) -> None:
        if error is None:
            logs.append("Template is active.\n")
        async with self.db.write() as conn:
            await records.update_fields(
                conn,
                record.id,
                {
                    "status": "failed" if error else "active",
                    "error_message": error,
                    "logs": "".join(logs)[-_LOG_LIMIT:],
                    "completed_at": utcnow(),
                },
            )
        if error is not None:  # nothing will use a failed layer; its log is kept in the record
            await self.backend.remove_layer(record.id)

    async def delete(self, env_id: str, ref: str) -> None:
        """Delete a custom template and its layer (409 for built-ins, builds and templates that
        sandboxes still use)."""
        if (builtin := self._builtin(ref)) is not None:
            raise Conflict(f"Template {builtin.name!r} is built in and cannot be deleted")
        found = await self._find(env_id, ref)
        if found is None:
            raise TemplateNotFound(f"Template {ref!r} not found")
        if found.status == "building":
            raise Conflict(f"Template {found.name!r} is still building")
        async with self.db.write() as conn:
            in_use = await sandbox_records.using_template(conn, env_id, found.id)
            if in_use:
                raise Conflict(
                    f"Template {found.name!r} is used by sandboxes {', '.join(in_use)}; "
                    "delete them first"
                )
            await records.remove(conn, found.id)
        await self.backend.remove_layer(found.id)
