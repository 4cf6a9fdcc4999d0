"""In-memory adapters of the `SandboxBackend` port, for tests and for servers without sandboxes.

`MemoryBackend` keeps each sandbox as a record in memory: its lifecycle (the same state machine
as the bubblewrap manager), environment and files, behind a data plane that answers the
protocol's basic routes (``/health``, ``/env``, ``/files/*``, ``/execute``, ``/commands/run``)
with agentd's shapes. No code runs anywhere: ``/execute`` and ``/commands/run`` answer what the
test's ``runner`` returns. `DisabledBackend` refuses everything (``sandbox.enabled = false``).
"""

from __future__ import annotations

import json
import posixpath
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from agentplex.core.ports import (
    DataPlaneResponse,
    DataPlaneSocket,
    ExitListener,
    IsolationInfo,
    Resources,
    SandboxBackend,
    Template,
)
from agentplex.errors import SandboxNotFound, SandboxStateConflict, SandboxUnavailable
from agentplex.sandbox.state import SandboxState, next_state

_JSON = {"content-type": "application/json"}


@dataclass
class MemorySandbox:
    """One sandbox of the in-memory backend."""

    id: str
    template: Template
    internet_access: bool
    env: dict[str, str]
    state: SandboxState = SandboxState.CREATING
    files: dict[str, bytes] = field(default_factory=dict)  # absolute path -> content
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, path) received


Runner = Callable[[MemorySandbox, str, dict[str, Any]], dict[str, Any]]
"""Answers ``/execute`` (kind "execute") and ``/commands/run`` (kind "command"): given the
sandbox and the request body, the JSON result (``stdout``, ``stderr``, ``exit_code``, ...)."""


def _quiet_runner(_sandbox: MemorySandbox, _kind: str, _body: dict[str, Any]) -> dict[str, Any]:
    return {"stdout": "", "stderr": "", "exit_code": 0}


def default_templates() -> list[Template]:
    return [
        Template("python", "python", "Python", "python", Resources(memory_mb=1024, disk_mb=2048)),
        Template("bash", "bash", "Bash", "bash"),
    ]


class MemoryBackend(SandboxBackend):
    """Sandboxes that exist only as records: fast, deterministic, no isolation needed."""

    def __init__(
        self,
        *,
        templates: list[Template] | None = None,
        runner: Runner = _quiet_runner,
    ) -> None:
        self.isolation = IsolationInfo("none", "in-memory backend: no code runs")
        self.builds_layers = True
        self.templates = templates if templates is not None else default_templates()
        self.runner = runner
        self.sandboxes: dict[str, MemorySandbox] = {}
        self.layers: set[str] = set()  # custom template layers that were built
        self.opened = False
        self.fail_next_create: str | None = None  # make the next create raise SandboxUnavailable
        self._listeners: list[ExitListener] = []

    def builtin_templates(self) -> list[Template]:
        return list(self.templates)

    async def open(self) -> None:
        self.opened = True

    async def close(self) -> None:
        for sandbox in self.sandboxes.values():
            if sandbox.state in (SandboxState.RUNNING, SandboxState.PAUSED):
                sandbox.state = SandboxState.STOPPED
        self.opened = False

    def status(self) -> dict[str, Any]:
        return {"isolation": "none", "backend": "memory", "sandboxes": len(self.sandbox_ids())}

    def problem(self) -> str | None:
        return None

    def on_exit(self, listener: ExitListener) -> None:
        self._listeners.append(listener)

    def crash(self, sandbox_id: str, reason: str = "the sandbox's processes exited") -> None:
        """Stop a sandbox as if its processes died, telling the listeners."""
        self._get(sandbox_id).state = SandboxState.STOPPED
        for listener in self._listeners:
            listener(sandbox_id, reason)

    def _get(self, sandbox_id: str) -> MemorySandbox:
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is None:
            raise SandboxNotFound(f"Sandbox {sandbox_id} not found")
        return sandbox

    async def create(
        self,
        sandbox_id: str,
        template: Template,
        *,
        env_vars: Mapping[str, str],
        internet_access: bool,
    ) -> None:
        await self.open()
        if self.fail_next_create is not None:
            reason, self.fail_next_create = self.fail_next_create, None
            raise SandboxUnavailable(reason)
        if template.layer_id is not None:
            if template.layer_writable:
                self.layers.add(template.layer_id)
            elif template.layer_id not in self.layers:
                raise SandboxUnavailable(f"The layer of template {template.name!r} is missing")
        env = {**dict(template.env), **env_vars}
        sandbox = MemorySandbox(sandbox_id, template, internet_access, env)
        sandbox.state = next_state(sandbox.state, "ready")
        self.sandboxes[sandbox_id] = sandbox

    async def start(
        self,
        sandbox_id: str,
        template: Template,
        *,
        env_vars: Mapping[str, str],
        internet_access: bool,
    ) -> None:
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is None:
            raise SandboxNotFound(f"Sandbox {sandbox_id} has no files here; create it again")
        sandbox.state = next_state(next_state(sandbox.state, "start"), "ready")

    async def stop(self, sandbox_id: str) -> None:
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is not None:
            sandbox.state = next_state(sandbox.state, "stop")

    async def pause(self, sandbox_id: str) -> None:
        sandbox = self._get(sandbox_id)
        sandbox.state = next_state(sandbox.state, "pause")

    async def resume(self, sandbox_id: str) -> None:
        sandbox = self._get(sandbox_id)
        sandbox.state = next_state(sandbox.state, "resume")

    async def delete(self, sandbox_id: str) -> None:
        self.sandboxes.pop(sandbox_id, None)

    async def remove_layer(self, template_id: str) -> None:
        self.layers.discard(template_id)

    def sandbox_ids(self) -> set[str]:
        live = (SandboxState.RUNNING, SandboxState.PAUSED)
        return {s.id for s in self.sandboxes.values() if s.state in live}

    # -- data plane ----------------------------------------------------------------------------
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
        sandbox = self._get(sandbox_id)
        if sandbox.state is not SandboxState.RUNNING:
            raise SandboxStateConflict(f"Sandbox {sandbox_id} is {sandbox.state.value}")
        url = urlsplit(path)
        query = dict(parse_qsl(url.query))
        if params:
            query.update(dict(params))
        body = json if json is not None else _decode(content)
        sandbox.calls.append((method, url.path))
        status, answer = self._route(sandbox, method, url.path, query, body)
        return DataPlaneResponse(status, _JSON, _dumps(answer))

    def _route(
        self,
        sandbox: MemorySandbox,
        method: str,
        path: str,
        query: dict[str, str],
        body: Any,
    ) -> tuple[int, dict[str, Any]]:
        body = body if isinstance(body, dict) else {}
        if (method, path) == ("GET", "/health"):
            return 200, {"status": "healthy"}
        if path == "/env":
            if method in ("PUT", "POST"):
                sandbox.env = {str(k): str(v) for k, v in (body.get("env_vars") or {}).items()}
            elif method == "PATCH":
                sandbox.env.update(
                    {str(k): str(v) for k, v in (body.get("env_vars") or {}).items()}
                )
            elif method == "DELETE":
                sandbox.env.clear()
            return 200, {"env_vars": dict(sandbox.env)}
        if (method, path) in (("POST", "/execute"), ("POST", "/commands/run")):
            kind = "execute" if path == "/execute" else "command"
            started = time.perf_counter()
            result = {
                "stdout": "",
                "stderr": "",
                "exit_code": 0,
                **self.runner(sandbox, kind, body),
            }
            result.setdefault("execution_time", time.perf_counter() - started)
            result.setdefault("success", result["exit_code"] == 0)
            return 200, result
        if path.startswith("/files/"):
            return self._files(sandbox, method, path, query, body)
        return 404, _error("NOT_FOUND", f"{method} {path}: no such route in the memory backend")

    def _files(
        self,
        sandbox: MemorySandbox,
        method: str,
        path: str,
        query: dict[str, str],
        body: dict[str, Any],
    ) -> tuple[int, dict[str, Any]]:
        target = posixpath.normpath(
            posixpath.join("/workspace", str(query.get("path") or body.get("path") or ""))
        )
        if not target.startswith(("/workspace", "/tmp")):  # noqa: S108
            return 403, _error("PATH_NOT_ALLOWED", f"path {target!r} is outside the sandbox")
        if (method, path) == ("POST", "/files/write"):
            sandbox.files[target] = str(body.get("content", "")).encode()
            return 200, {"success": True, "path": target}
        if (method, path) == ("GET", "/files/exists"):
            return 200, {"exists": target in sandbox.files}
        if (method, path) == ("GET", "/files/list"):
            prefix = target.rstrip("/") + "/"
            names = sorted(
                {p[len(prefix) :].split("/")[0] for p in sandbox.files if p.startswith(prefix)}
            )
            entries = [{"name": n, "path": prefix + n} for n in names]
            return 200, {"files": entries}
        if target not in sandbox.files:
            return 404, _error("FILE_NOT_FOUND", f"no such file or directory: {target}")
        if (method, path) == ("GET", "/files/read"):
            return 200, {"content": sandbox.files[target].decode(errors="replace"), "path": target}
        if (method, path) == ("DELETE", "/files/remove"):
            del sandbox.files[target]
            return 200, {"success": True}
        return 404, _error("NOT_FOUND", f"{method} {path}: no such route in the memory backend")

    def websocket(
        self, sandbox_id: str, path: str, *, headers: Mapping[str, str] | None = None
    ) -> AbstractAsyncContextManager[DataPlaneSocket]:
        return _refuse("the in-memory sandbox backend has no WebSockets")


class DisabledBackend(SandboxBackend):
    """What the server uses when sandboxes are switched off: every call says so."""

    def __init__(self, reason: str = "Sandboxes are disabled on this server") -> None:
        self.reason = reason
        self.isolation = IsolationInfo("none", reason)
        self.builds_layers = False

    def _refuse(self) -> SandboxUnavailable:
        return SandboxUnavailable(f"{self.reason} (sandbox.enabled=false)")

    def builtin_templates(self) -> list[Template]:
        return []

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {"enabled": False}

    def problem(self) -> str | None:
        return None  # switched off on purpose: nothing is wrong

    def on_exit(self, listener: ExitListener) -> None:
        return None

    async def create(
        self,
        sandbox_id: str,
        template: Template,
        *,
        env_vars: Mapping[str, str],
        internet_access: bool,
    ) -> None:
        raise self._refuse()

    async def start(
        self,
        sandbox_id: str,
        template: Template,
        *,
        env_vars: Mapping[str, str],
        internet_access: bool,
    ) -> None:
        raise self._refuse()

    async def stop(self, sandbox_id: str) -> None:
        return None

    async def pause(self, sandbox_id: str) -> None:
        raise self._refuse()

    async def resume(self, sandbox_id: str) -> None:
        raise self._refuse()

    async def delete(self, sandbox_id: str) -> None:
        return None

    async def remove_layer(self, template_id: str) -> None:
        return None

    def sandbox_ids(self) -> set[str]:
        return set()

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
        raise self._refuse()

    def websocket(
        self, sandbox_id: str, path: str, *, headers: Mapping[str, str] | None = None
    ) -> AbstractAsyncContextManager[DataPlaneSocket]:
        return _refuse(f"{self.reason} (sandbox.enabled=false)")


@asynccontextmanager
async def _refuse(reason: str) -> AsyncIterator[DataPlaneSocket]:
    raise SandboxUnavailable(reason)
    yield  # pragma: no cover - makes this a generator


def _decode(content: bytes | None) -> Any:
    if not content:
        return {}
    try:
        return json.loads(content)
    except ValueError:
        return {}


def _dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": message, "code": code, "message": message}
