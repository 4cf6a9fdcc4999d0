"""Sandbox templates: the built-ins, and custom templates built from a base template plus
setup commands into a layer of their own (built once, mounted read-only into every sandbox of
the template)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from agentplex.core.clock import aware, iso, new_id, utcnow
from agentplex.db.engine import Database
from agentplex.db.tables import templates as templates_table
from agentplex.errors import BadRequest, Conflict, NotFound

if TYPE_CHECKING:
    from agentplex.sandbox import SandboxManager, Template

log = logging.getLogger("agentplex.templates")

_STEP_TIMEOUT = 900.0
_LOG_LIMIT = 1_000_000
_IMAGE_LANGUAGES = (("python", "python"), ("node", "node"), ("golang", "go"), ("go:", "go"))


class TemplateNotFound(NotFound):
    """Template not found."""

    surface_codes = {"hopx": "TEMPLATE_NOT_FOUND"}


class TemplateNotReady(Conflict):
    """The template is not built yet (or its build failed)."""

    surface_codes = {"hopx": "TEMPLATE_NOT_READY"}


@dataclass(frozen=True, slots=True)
class BuildRequest:
    name: str
    base: str
    commands: list[tuple[str, str]]  # (command, workdir)
    env: dict[str, str]
    resources: dict[str, Any]
    steps: list[dict[str, Any]]


def parse_build(body: dict[str, Any]) -> BuildRequest:
    """Read a build request: ``{name, from_template | from_image, steps | setup_commands}``."""
    name = body.get("name") or body.get("alias")
    if not isinstance(name, str) or not name.strip():
        raise BadRequest("A template build needs a 'name'")
    base = body.get("from_template") or body.get("base_template") or body.get("template")
    if not base and isinstance(body.get("from_image"), str):
        image = body["from_image"].lower()
        base = next((lang for key, lang in _IMAGE_LANGUAGES if key in image), "bash")
    commands: list[tuple[str, str]] = []
    env: dict[str, str] = {}
    workdir = "/workspace"
    steps = body.get("steps") or []
    if not isinstance(steps, list):
        raise BadRequest("'steps' must be a list of {type, args}")
    for index, step in enumerate(steps):
        if not isinstance(step, dict):
            raise BadRequest(f"step {index} must be an object with 'type' and 'args'")
        kind = str(step.get("type", "")).upper()
        args = [str(a) for a in step.get("args") or []]
        if kind == "RUN" and args:
            commands.append((" ".join(args), workdir))
        elif kind == "ENV" and args:
            if len(args) == 1 and "=" in args[0]:
                key, _, value = args[0].partition("=")
            elif len(args) == 2:
                key, value = args
            else:
                raise BadRequest(f"step {index}: ENV takes KEY VALUE or KEY=VALUE")
            env[key] = value
        elif kind == "WORKDIR" and args:
            workdir = args[0]
        else:
            raise BadRequest(
                f"step {index}: {kind or 'a step without a type'} is not supported; "
                "use RUN, ENV or WORKDIR (files can be written by RUN commands)"
            )
    setup = body.get("setup_commands") or []
    if not isinstance(setup, list) or not all(isinstance(c, str) for c in setup):
        raise BadRequest("'setup_commands' must be a list of shell commands")
    commands += [(c, workdir) for c in setup]
    extra_env = body.get("env") or body.get("env_vars") or {}
    if not isinstance(extra_env, dict):
        raise BadRequest("'env' must be an object of strings")
    env.update({str(k): str(v) for k, v in extra_env.items()})
    resources = {
        k: v
        for k, v in (
            ("vcpu", body.get("cpu")),
            ("memory_mb", body.get("memory")),
            ("disk_mb", int(body["diskGB"]) * 1024 if body.get("diskGB") else None),
        )
        if v is not None
    }
    return BuildRequest(name.strip(), str(base or "python"), commands, env, resources, steps)


class TemplateService:
    """Lists, builds and deletes templates; the manager gets every active one."""

    def __init__(self, db: Database, manager: SandboxManager, data_dir: Path) -> None:
        self.db = db
        self.manager = manager
        self.root = data_dir.resolve() / "templates"
        self._builds: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Register active custom templates; builds cut short by a restart are failed."""
        async with self.db.write() as conn:
            await conn.execute(
                update(templates_table)
                .where(templates_table.c.status == "building")
                .values(
                    status="failed",
                    error_message="the server restarted during the build; build it again",
                    completed_at=utcnow(),
                )
            )
            rows = (
                await conn.execute(
                    select(templates_table).where(templates_table.c.status == "active")
                )
            ).all()
        for row in rows:
            self.manager.templates[row.id] = self._template(row._mapping)

    async def close(self) -> None:
        for task in list(self._builds):
            task.cancel()
        for task in list(self._builds):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- reading -----------------------------------------------------------------------------

    def _builtins(self) -> list[Template]:
        return [t for t in self.manager.templates.values() if t.builtin]

    def _builtin(self, ref: str) -> Template | None:
        return next((t for t in self._builtins() if ref in (t.id, t.name)), None)

    async def _row(self, env_id: str, ref: str) -> dict[str, Any] | None:
        query = select(templates_table).where(
            templates_table.c.env_id == env_id,
            (templates_table.c.id == ref) | (templates_table.c.name == ref),
        )
        async with self.db.read() as conn:
            row = (await conn.execute(query)).first()
        return dict(row._mapping) if row else None

    async def list_views(self, env_id: str) -> list[dict[str, Any]]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(templates_table)
                .where(templates_table.c.env_id == env_id)
                .order_by(templates_table.c.created_at)
            )
            custom = [self._view(dict(r._mapping)) for r in rows]
        return [_builtin_view(t) for t in self._builtins()] + custom

    async def view(self, env_id: str, ref: str) -> dict[str, Any]:
        if (builtin := self._builtin(ref)) is not None:
            return _builtin_view(builtin)
        row = await self._row(env_id, ref)
        if row is None:
            raise TemplateNotFound(f"Template {ref!r} not found")
        return self._view(row)

    async def resolve(self, env_id: str, ref: str | None) -> Template:
        """The template a sandbox of ``env_id`` is created from."""
        name = ref or "python"
        if (builtin := self._builtin(name)) is not None:
            return builtin
        row = await self._row(env_id, name)
        if row is None:
            available = sorted(t.name for t in self._builtins())
            raise TemplateNotFound(f"Template {name!r} not found; built in: {', '.join(available)}")
        if row["status"] != "active":
            raise TemplateNotReady(
                f"Template {row['name']!r} is {row['status']}"
                + (f": {row['error_message']}" if row.get("error_message") else "")
            )
        return self.manager.templates.get(row["id"]) or self._template(row)

    # -- building ----------------------------------------------------------------------------

    async def build(self, env_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Start building a template; answers at once, the build goes on in the background."""
        if not self.manager.isolation.isolated:
            raise TemplateNotReady(
                "Custom templates need sandbox isolation (bubblewrap), which is unavailable here"
            )
        request = parse_build(body)
        base = await self.resolve(env_id, request.base)
        if not base.builtin:
            raise BadRequest("A template can only be built from a built-in template")
        existing = await self._row(env_id, request.name)
        if existing is not None:
            if not body.get("update"):
                raise Conflict(f"Template {request.name!r} exists; delete it or send update=true")
            await self.delete(env_id, existing["id"])
        template_id = "tpl_" + new_id().replace("-", "")[:20]
        resources = {
            "vcpu": base.resources.vcpu,
            "memory_mb": base.resources.memory_mb,
            "disk_mb": base.resources.disk_mb,
            **request.resources,
        }
        now = utcnow()
        row = {
            "id": template_id,
            "env_id": env_id,
            "name": request.name,
            "display_name": str(body.get("display_name") or request.name),
            "base_template": base.id,
            "language": base.language,
            "status": "building",
            "steps": [{"command": c, "workdir": w} for c, w in request.commands],
            "env": request.env,
            "resources": resources,
            "logs": "",
            "error_message": None,
            "created_at": now,
            "started_at": now,
            "completed_at": None,
        }
        async with self.db.write() as conn:
            await conn.execute(templates_table.insert().values(**row))
        task = asyncio.create_task(self._run(row), name=f"template-build-{template_id}")
        self._builds.add(task)
        task.add_done_callback(self._builds.discard)
        return {
            "build_id": template_id,
            "template_id": template_id,
            "status": "building",
            "logs_url": f"/v1/templates/build/{template_id}/logs",
        }

    def _layer(self, template_id: str) -> Path:
        return self.root / template_id / "layer"

    def _template(self, row: Any, *, building: bool = False) -> Template:
        from agentplex.sandbox import Resources, Template
        from agentplex.sandbox.templates import layer_env

        res = row["resources"]
        return Template(
            id=row["id"],
            name=row["name"],
            display_name=row["display_name"],
            language=row["language"],
            resources=Resources(
                vcpu=float(res.get("vcpu", 1.0)),
                memory_mb=int(res.get("memory_mb", 512)),
                disk_mb=int(res.get("disk_mb", 1024)),
            ),
            description=f"Built from {row['base_template']}",
            builtin=False,
            layer=str(self._layer(row["id"])),
            layer_writable=building,
            env=(*layer_env(), *sorted(dict(row["env"]).items())),
        )

    async def _run(self, row: dict[str, Any]) -> None:
        template_id = row["id"]
        layer = self._layer(template_id)
        layer.mkdir(parents=True, exist_ok=True)
        uid = getattr(self.manager, "sandbox_uid", None)
        if uid is not None and os.geteuid() == 0:
            os.chown(layer, uid, uid)  # the build runs as the sandbox user
        sandbox_id = "bld_" + new_id().replace("-", "")[:20]
        logs: list[str] = []
        error: str | None = None
        try:
            builder = self._template(row, building=True)
            handle = await self.manager.create(builder, internet_access=True, sandbox_id=sandbox_id)
            for index, step in enumerate(row["steps"], start=1):
                command = step["command"]
                logs.append(f"Step {index}/{len(row['steps'])}: RUN {command}\n")
                await self._save_logs(template_id, logs)
                status, _headers, body = await handle.request(
                    "POST",
                    "/commands/run",
                    json={"command": command, "workdir": step["workdir"], "timeout": _STEP_TIMEOUT},
                    timeout=_STEP_TIMEOUT + 30,
                )
                result = json.loads(body or b"{}")
                output = str(result.get("stdout", "")) + str(result.get("stderr", ""))
                details = result.get("details") or {}
                output += str(details.get("stdout", "")) + str(details.get("stderr", ""))
                logs.append(output if output.endswith("\n") or not output else output + "\n")
                exit_code = result.get("exit_code")
                if status >= 400 or exit_code not in (0, None):
                    reason = result.get("message") or f"exit code {exit_code}"
                    error = f"step {index} `{command}` failed ({reason}):\n{output[-4000:]}"
                    logs.append(f"ERROR: {error}\n")
                    break
        except asyncio.CancelledError:
            error = "the build was cancelled (server shutting down)"
            raise
        except Exception as exc:
            log.exception("template build %s failed", template_id)
            error = f"the build sandbox failed: {exc}"
            logs.append(f"ERROR: {error}\n")
        finally:
            with contextlib.suppress(Exception):
                await self.manager.delete(sandbox_id)
            await self._finish(row, logs, error)

    async def _save_logs(self, template_id: str, logs: list[str]) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                update(templates_table)
                .where(templates_table.c.id == template_id)
                .values(logs="".join(logs)[-_LOG_LIMIT:])
            )

    async def _finish(self, row: dict[str, Any], logs: list[str], error: str | None) -> None:
        if error is None:
            logs.append("Template is active.\n")
        async with self.db.write() as conn:
            await conn.execute(
                update(templates_table)
                .where(templates_table.c.id == row["id"])
                .values(
                    status="failed" if error else "active",
                    error_message=error,
                    logs="".join(logs)[-_LOG_LIMIT:],
                    completed_at=utcnow(),
                )
            )
        if error is None:
            self.manager.templates[row["id"]] = self._template(row)
        else:  # nothing will use a failed layer; its log is kept in the record
            await asyncio.to_thread(shutil.rmtree, self._layer(row["id"]), True)

    async def build_status(self, env_id: str, ref: str) -> dict[str, Any]:
        row = await self._row(env_id, ref)
        if row is None:
            raise TemplateNotFound(f"Build {ref!r} not found")
        started, completed = row["started_at"], row["completed_at"]
        duration = None
        if started is not None and completed is not None:
            duration = int((aware(completed) - aware(started)).total_seconds() * 1000)
        steps = row["steps"]
        done = row["logs"].count("Step ")
        return {
            "build_id": row["id"],
            "template_id": row["id"],
            "status": row["status"],
            "progress": 100 if row["status"] != "building" else int(90 * done / max(1, len(steps))),
            "current_step": steps[done - 1]["command"]
            if row["status"] == "building" and done
            else None,
            "started_at": iso(started),
            "completed_at": iso(completed),
            "error_message": row["error_message"],
            "build_duration_ms": duration,
        }

    async def build_logs(self, env_id: str, ref: str, offset: int) -> dict[str, Any]:
        row = await self._row(env_id, ref)
        if row is None:
            raise TemplateNotFound(f"Build {ref!r} not found")
        text: str = row["logs"]
        offset = max(0, min(offset, len(text)))
        return {
            "logs": text[offset:],
            "offset": len(text),
            "status": row["status"],
            "complete": row["status"] != "building",
        }

    async def delete(self, env_id: str, ref: str) -> None:
        if (builtin := self._builtin(ref)) is not None:
            raise Conflict(f"Template {builtin.name!r} is built in and cannot be deleted")
        row = await self._row(env_id, ref)
        if row is None:
            raise TemplateNotFound(f"Template {ref!r} not found")
        if row["status"] == "building":
            raise Conflict(f"Template {row['name']!r} is still building")
        in_use = [h.id for h in self.manager.list() if h.template.id == row["id"]]
        if in_use:
            raise Conflict(
                f"Template {row['name']!r} is used by sandboxes {', '.join(in_use[:5])}; "
                "delete them first"
            )
        async with self.db.write() as conn:
            await conn.execute(templates_table.delete().where(templates_table.c.id == row["id"]))
        self.manager.templates.pop(row["id"], None)
        await asyncio.to_thread(shutil.rmtree, self.root / row["id"], True)

    def _view(self, row: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": row["id"],
            "name": row["name"],
            "display_name": row["display_name"],
            "language": row["language"],
            "resources": row["resources"],
            "description": f"Built from {row['base_template']}",
            "base_template": row["base_template"],
            "builtin": False,
            "is_public": False,
            "status": row["status"],
            "is_active": row["status"] == "active",
            "error_message": row["error_message"],
            "created_at": iso(row["created_at"]),
        }


def _builtin_view(template: Template) -> dict[str, Any]:
    data = template.to_dict()
    data.update(status="active", is_active=True, is_public=True)
    return data
