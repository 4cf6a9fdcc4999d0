"""SandboxManager: the bubblewrap adapter of core's `SandboxBackend` port.

It creates, stops, starts, pauses, resumes and deletes sandboxes, keeps a warm pool, watches
workspace quotas and carries each sandbox's data plane (agentd, over a unix socket):

    async with SandboxManager(data_dir, pool_size=4) as manager:
        template = manager.builtin("python")
        await manager.create("sbx1", template, env_vars={"A": "1"}, internet_access=False)
        answer = await manager.request("sbx1", "POST", "/execute", json={"code": "1+1"})
        await manager.pause("sbx1"); await manager.resume("sbx1")
        await manager.stop("sbx1"); await manager.start("sbx1", template, ...)   # files kept
        await manager.delete("sbx1")                                               # all gone

Layout: `<data_dir>/sandboxes/<id>/workspace/` (and `env.json` while stopped), custom template
layers in `<data_dir>/templates/<template id>/layer/`. Runtime state (agentd socket, logs) lives
under a short per-manager directory in /tmp, because unix socket paths are limited to 108 bytes;
it is removed on close.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from agentplex.core.ports import (
    EPHEMERAL_SANDBOX_PREFIXES,
    DataPlaneResponse,
    DataPlaneSocket,
    ExitListener,
    IsolationInfo,
    Resources,
    SandboxBackend,
    Template,
)
from agentplex.errors import (
    BadRequest,
    SandboxNotFound,
    SandboxStateConflict,
    SandboxUnavailable,
    TemplateNotFound,
)
from agentplex.sandbox.agentd.config import ADOPT_FILE
from agentplex.sandbox.cgroups import CgroupRoot
from agentplex.sandbox.handle import SandboxHandle
from agentplex.sandbox.isolation import detect_isolation
from agentplex.sandbox.launcher import Launcher, Runtime
from agentplex.sandbox.pool import WarmPool
from agentplex.sandbox.proctree import alive
from agentplex.sandbox.quota import QuotaWatch
from agentplex.sandbox.state import SandboxState, next_state
from agentplex.sandbox.templates import builtin_templates, layer_env
from agentplex.sandbox.zygote_client import ZygoteClient

log = logging.getLogger(__name__)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
DEFAULT_SANDBOX_UID = 10000


class SandboxManager(SandboxBackend):
    """Every sandbox of one server process. Use `async with` (or `open()` / `close()`)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        allow_unisolated: bool = False,
        pool_size: int = 2,
        internet_pool_size: int = 0,
        isolation: IsolationInfo | None = None,
        templates: list[Template] | None = None,
        sandbox_uid: int = DEFAULT_SANDBOX_UID,
        runtime_dir: Path | None = None,
        quota_interval: float = 2.0,
        preload_scientific: bool = True,
        hidden_paths: list[Path] | None = None,
        eager_kernel: bool = True,
    ) -> None:
        self.eager_kernel = eager_kernel
        self.data_dir = Path(data_dir).resolve()
        self.sandboxes_dir = self.data_dir / "sandboxes"
        self.layers_dir = self.data_dir / "templates"
        self.allow_unisolated = allow_unisolated
        self.isolation = isolation or detect_isolation(sandbox_uid if os.geteuid() == 0 else None)
        self.builds_layers = self.isolation.isolated  # a layer is mounted by bubblewrap
        self._builtins = {t.id: t for t in (templates or builtin_templates())}
        self.sandbox_uid = sandbox_uid
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:8]
        self.run_dir = runtime_dir or Path(tempfile.gettempdir()) / f"agentplex-{digest}"
        self.quota_interval = quota_interval
        self.preload_scientific = preload_scientific
        self.hidden = [self.data_dir, self.run_dir, *(hidden_paths or [])]
        self.cgroups: CgroupRoot | None = None
        self.pool_sizes = {False: pool_size, True: internet_pool_size}
        self._handles: dict[str, SandboxHandle] = {}
        self._runtimes: dict[str, Runtime] = {}
        self._by_key: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._listeners: list[ExitListener] = []
        self._zygote: ZygoteClient | None = None
        self._launcher: Launcher | None = None
        self._pool: WarmPool[Runtime] | None = None
        self._quota: QuotaWatch | None = None
        self._opened = False
        self._open_error: str | None = None
        self._open_lock = asyncio.Lock()
        # supervision of the zygotes: set while one is dead and being restarted
        self._zygote_error: str | None = None
        self._recovery: asyncio.Task[None] | None = None

    # -- set-up --------------------------------------------------------------------------------
    def builtin_templates(self) -> list[Template]:
        return list(self._builtins.values())

    def builtin(self, template_id: str) -> Template:
        """A built-in template by id (TemplateNotFound if this host lacks it)."""
        try:
            return self._builtins[template_id]
        except KeyError:
            raise TemplateNotFound(f"No built-in template {template_id!r} here") from None

    def status(self) -> dict[str, Any]:
        """Isolation, limits and pool state, for /status and start-up logs."""
        pool = self._pool
        return {
            "isolation": self.isolation.kind,
            "isolation_reason": self.isolation.reason,
            "unisolated_allowed": self.allow_unisolated,
            "cgroups": (
                f"v{self.cgroups.version}"
                if self.cgroups
                else "unavailable (no memory/cpu/pids limits)"
            ),
            "pool": {
                "target": self.pool_sizes[False],
                "ready": pool.size(False) if pool else 0,
                "last_error": pool.last_error if pool else None,
            },
            "sandboxes": len(self._runtimes),
            "zygote": {
                "running": self._zygote.running if self._zygote else False,
                "restarts": self._zygote.restarts if self._zygote else 0,
                "problem": self._zygote_error,
            },
        }

    def problem(self) -> str | None:
        # sandboxes refused for want of isolation are a configuration, shown in /status
        return self._open_error or self._zygote_error

    def on_exit(self, listener: ExitListener) -> None:
        self._listeners.append(listener)

    async def open(self) -> None:
        """Start the zygote and the warm pool; clear what a previous run left behind."""
        async with self._open_lock:
            if self._opened:
                return
            try:
                await self._open()
            except Exception as exc:
                self._open_error = f"the sandbox layer failed to start: {exc}"
                if isinstance(exc, SandboxUnavailable):
                    raise
                raise SandboxUnavailable(self._open_error) from exc
            self._open_error = None

    async def _open(self) -> None:
        if not self.isolation.isolated:
            log.warning(
                "SANDBOX ISOLATION UNAVAILABLE (%s): sandboxes %s",
                self.isolation.reason,
                "run UNISOLATED" if self.allow_unisolated else "are refused",
            )
        self.sandboxes_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(mode=0o711, exist_ok=True)
        for stale in self.run_dir.iterdir():
            shutil.rmtree(stale, ignore_errors=True)
        for stale in self.sandboxes_dir.iterdir():
            # pooled sandboxes of a previous run, and the server's own short-lived ones
            if stale.name.startswith((".pool-", *EPHEMERAL_SANDBOX_PREFIXES)):
                shutil.rmtree(stale, ignore_errors=True)
        self.cgroups = await asyncio.to_thread(CgroupRoot.detect)
        if self.cgroups is not None:
            await asyncio.to_thread(self.cgroups.sweep)
        else:
            log.warning(
                "SANDBOX LIMITS UNAVAILABLE: no writable cgroup v2 (memory, cpu and pids "
                "delegated) or v1 memory, cpu and pids hierarchies; sandboxes run WITHOUT "
                "memory, CPU or process limits"
            )
        # the light zygote cleans up after a server that died without closing us (SIGKILL)
        janitor = {
            "run_dir": str(self.run_dir),
            "cgroups": [str(p) for p in self.cgroups.bases.values()] if self.cgroups else [],
        }
        self._zygote = ZygoteClient(
            self.run_dir / "zygote.log",
            self._on_exit,
            light=not self.preload_scientific,
            on_death=self._on_zygote_death,
            janitor=janitor,
        )
        await self._zygote.start(Launcher.environ())
        self._launcher = Launcher(
            isolation=self.isolation,
            zygote=self._zygote,
            cgroups=self.cgroups,
            run_dir=self.run_dir,
            hidden=self.hidden,
            sandbox_uid=self.sandbox_uid,
            eager_kernel=self.eager_kernel,
        )
        self._opened = True
        if self.isolation.isolated or self.allow_unisolated:
            self._pool = WarmPool(self.pool_sizes, self._pool_spawn, self._pool_discard)
            self._pool.kick()
        self._quota = QuotaWatch(self.list, self.quota_interval)
        self._quota.start()

    async def __aenter__(self) -> SandboxManager:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_pool(self, timeout: float = 60.0) -> None:  # noqa: ASYNC109
        """Wait until the warm pool is full (benchmarks and tests)."""
        await self.open()
        if self._pool is not None:
            await self._pool.wait_full(timeout)

    # -- helpers -------------------------------------------------------------------------------
    def _lock(self, sid: str) -> asyncio.Lock:
        return self._locks.setdefault(sid, asyncio.Lock())

    def get(self, sandbox_id: str) -> SandboxHandle:
        """The handle of a sandbox this manager knows; SandboxNotFound otherwise."""
        handle = self._handles.get(sandbox_id)
        if handle is None:
            raise SandboxNotFound(f"Sandbox {sandbox_id} not found")
        return handle

    def list(self) -> list[SandboxHandle]:
        return sorted(self._handles.values(), key=lambda h: h.created_at)

    def sandbox_ids(self) -> set[str]:
        return set(self._runtimes)

    def _check_isolation(self) -> None:
        if not self.isolation.isolated and not self.allow_unisolated:
            raise SandboxUnavailable(
                f"Sandboxes are unavailable: isolation is unavailable ({self.isolation.reason});"
                " install bubblewrap with user namespaces, or allow unisolated sandboxes"
                " (sandbox.allow_unisolated)"
            )

    def _layer(self, template: Template) -> Path | None:
        """The host directory of a custom template's layer (made, for a build)."""
        if template.layer_id is None:
            return None
        if not _ID.match(template.layer_id):
            raise BadRequest(f"Invalid template id {template.layer_id!r}")
        layer = self.layers_dir / template.layer_id / "layer"
        if template.layer_writable:
            layer.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0 and self.isolation.isolated:
                os.chown(layer, self.sandbox_uid, self.sandbox_uid)  # the build runs as the code
        elif not layer.is_dir():
            raise SandboxUnavailable(f"The layer of template {template.name!r} is missing")
        return layer

    def _new_handle(
        self,
        sandbox_id: str,
        template: Template,
        env_vars: Mapping[str, str],
        internet_access: bool,
    ) -> SandboxHandle:
        """A handle for a sandbox of `template`, registered; its environment is the layer's,
        then the template's, then the caller's."""
        layered = layer_env() if template.layer_id is not None else ()
        handle = SandboxHandle(
            id=sandbox_id,
            template=template,
            internet_access=internet_access,
            env_vars={**dict(layered), **dict(template.env), **env_vars},
            created_at=time.time(),
            isolation=self.isolation.kind,
            workspace=self.sandboxes_dir / sandbox_id / "workspace",
        )
        if template.layer_writable and template.layer_id and _ID.match(template.layer_id):
            # a build writes its layer on the host's disk too: the quota watch counts it
            handle.layer = self.layers_dir / template.layer_id / "layer"
        self._handles[sandbox_id] = handle
        return handle

    def _on_exit(self, key: str, pid: int, status: int) -> None:
        sid = self._by_key.get(key)
        handle = self._handles.get(sid) if sid else None
        if handle is None or handle.state not in (SandboxState.RUNNING, SandboxState.PAUSED):
            return
        rt = self._runtimes.get(handle.id)
        if rt is None or rt.key != key:
            return
        oom = rt.cgroup.oom_kills() if rt.cgroup else 0
        handle.reason = f"the sandbox's processes exited (status {status})" + (
            f"; the out-of-memory killer ended {oom} process(es)" if oom else ""
        )
        handle.state = SandboxState.STOPPED
        asyncio.get_running_loop().create_task(self._teardown(handle))
        for listener in self._listeners:
            listener(handle.id, handle.reason)

    # -- supervision -----------------------------------------------------------------------------
    def _on_zygote_death(self, light: bool) -> None:
        """A zygote exited while in use (killed, crashed): say so in health until it is back,
        and restart it."""
        which = "light" if light else "full"
        self._zygote_error = (
            f"the sandbox fork server (the {which} zygote) exited; restarting it "
            f"(see {self.run_dir / 'zygote.log'})"
        )
        log.error("%s", self._zygote_error)
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self, first_delay: float = 0.5, max_delay: float = 30.0) -> None:
        """Stop the sandboxes that died with the zygote, then start it again, backing off
        (0.5 s, doubling up to 30 s) while it keeps failing."""
        assert self._zygote is not None
        delay = first_delay
        while self._opened:
            await asyncio.sleep(delay)
            await self._reap_dead_sandboxes()
            try:
                await self._zygote.restart_dead(Launcher.environ())
            except Exception as exc:
                self._zygote_error = f"the sandbox fork server (zygote) failed to restart: {exc}"
                log.error("%s; retrying in %.1f s", self._zygote_error, delay)
                delay = min(delay * 2, max_delay)
                continue
            self._zygote_error = None
            log.warning("the sandbox fork server (zygote) was restarted")
            if self._pool is not None:
                self._pool.kick()
            return

    async def _reap_dead_sandboxes(self) -> None:
        """Mark stopped (and tear down) every sandbox whose processes are gone: a sandbox's
        bubblewrap dies with the light zygote, without an "exited" event."""
        for handle in list(self._handles.values()):
            rt = self._runtimes.get(handle.id)
            if rt is None or handle.state not in (SandboxState.RUNNING, SandboxState.PAUSED):
                continue
            if alive(rt.agentd_pid) and (not rt.bwrap_pid or alive(rt.bwrap_pid)):
                continue
            handle.reason = (
                "the sandbox's processes ended when the server's sandbox fork server (zygote) "
                "died; start it again (its files are kept)"
            )
            handle.state = SandboxState.STOPPED
            await self._teardown(handle)
            for listener in self._listeners:
                listener(handle.id, handle.reason)
        if self._pool is not None:  # pooled sandboxes died the same way
            for queue in self._pool.ready.values():
                dead = [rt for rt in queue if not alive(rt.agentd_pid)]
                for rt in dead:
                    queue.remove(rt)
                    await self._pool_discard(rt)

    async def _zygote_up(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Wait (up to ``timeout``) for a zygote being restarted, else refuse clearly."""
        recovery = self._recovery
        if recovery is not None and not recovery.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(recovery), timeout)
        if self._zygote_error is not None:
            raise SandboxUnavailable(f"Sandboxes are unavailable: {self._zygote_error}")

    def _adopt(self, handle: SandboxHandle, rt: Runtime) -> None:
        """Hand a pooled sandbox its id, env and limits: agentd reads this file before it
        serves its next request (ADOPT_FILE), so creating costs no round trip."""
        body = {
            "sandbox_id": handle.id,
            "template": handle.template.id,
            "env_vars": handle.env_vars,
            "fsize_bytes": handle.template.resources.disk_mb * 1024 * 1024,
        }
        # no rename needed: nothing reads it before create() returns. 0644: read by agentd's
        # own uid, in a directory closed to the code
        fd = os.open(rt.runtime_dir / ADOPT_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(body))

    # -- pool ----------------------------------------------------------------------------------
    def _pool_template(self) -> Template:
        """Pooled sandboxes start as the default template with the largest disk of any
        built-in; adoption lowers the limits to the template's."""
        base = self._builtins.get("python") or next(iter(self._builtins.values()))
        biggest = max(t.resources.disk_mb for t in self._builtins.values())
        resources = Resources(memory_mb=base.resources.memory_mb, disk_mb=biggest)
        return Template(base.id, base.name, base.display_name, base.language, resources)

    async def _pool_spawn(self, internet: bool) -> Runtime:
        assert self._launcher is not None
        key = uuid.uuid4().hex[:12]
        home = self.sandboxes_dir / f".pool-{key}"
        try:
            return await self._launcher.spawn(
                key,
                home,
                template=self._pool_template(),
                internet=internet,
                env_vars={},
                sandbox_id="",
                warm=True,
            )
        except BaseException:
            shutil.rmtree(home, ignore_errors=True)
            raise

    async def _pool_discard(self, rt: Runtime) -> None:
        assert self._launcher is not None
        await self._launcher.destroy(rt)
        shutil.rmtree(self.sandboxes_dir / f".pool-{rt.key}", ignore_errors=True)

    # -- lifecycle -----------------------------------------------------------------------------
    async def create(
        self,
        sandbox_id: str,
        template: Template,
        *,
        env_vars: Mapping[str, str],
        internet_access: bool,
    ) -> None:
        """A running sandbox (from the warm pool when one is ready)."""
        self._check_isolation()
        if not _ID.match(sandbox_id) or sandbox_id in self._handles:
            raise BadRequest(f"Invalid or duplicate sandbox id {sandbox_id!r}")
        await self.open()
        await self._zygote_up()
        assert self._launcher is not None
        handle = self._new_handle(sandbox_id, template, env_vars, internet_access)
        env = handle.env_vars
        home = self.sandboxes_dir / sandbox_id
        try:
            layer = self._layer(template)
            # pooled sandboxes have no template layer mounted: layered templates start cold
            rt = self._pool.take(internet_access) if self._pool and layer is None else None
            if rt is not None:
                os.rename(self.sandboxes_dir / f".pool-{rt.key}", home)
                self._launcher.retarget(rt, home, template)
                self._adopt(handle, rt)
            else:
                rt = await self._launcher.spawn(
                    uuid.uuid4().hex[:12],
                    home,
                    template=template,
                    internet=internet_access,
                    env_vars=env,
                    sandbox_id=sandbox_id,
                    layer=layer,
                )
            self._attach(handle, rt)
        except BaseException:
            self._handles.pop(sandbox_id, None)
            await self._teardown(handle)
            shutil.rmtree(home, ignore_errors=True)
            raise

    def _attach(self, handle: SandboxHandle, rt: Runtime) -> None:
        self._runtimes[handle.id] = rt
        self._by_key[rt.key] = handle.id
        handle.socket_path = rt.socket_path
        handle._key = rt.key
        client, rt.client = rt.client, None
        handle.adopt(client)
        handle.state = next_state(handle.state, "ready")
        handle.reason = ""

    async def _teardown(self, handle: SandboxHandle) -> None:
        """End the sandbox's processes and drop its runtime; its environment is kept on disk
        for `start`."""
        await handle.aclose()
        rt = self._runtimes.pop(handle.id, None)
        if rt is None or self._launcher is None:
            return
        self._by_key.pop(rt.key, None)
        with contextlib.suppress(OSError):
            shutil.copyfile(
                rt.runtime_dir / "env.json", self.sandboxes_dir / handle.id / "env.json"
            )
        await self._launcher.destroy(rt)

    async def stop(self, sandbox_id: str) -> None:
        """Kill the sandbox's processes; its files (and env) stay for `start`."""
        handle = self._handles.get(sandbox_id)
        if handle is None:
            return  # nothing of it runs in this process
        async with self._lock(sandbox_id):
            state = next_state(handle.state, "stop")
            if handle.state is SandboxState.PAUSED:
                await self._thaw(sandbox_id)
            await self._teardown(handle)
            handle.state = state

    async def start(
        self,
        sandbox_id: str,
        template: Template,
        *,
        env_vars: Mapping[str, str],
        internet_access: bool,
    ) -> None:
        """Bring a stopped sandbox back with its files and its last environment."""
        self._check_isolation()
        await self.open()
        await self._zygote_up()
        assert self._launcher is not None
        home = self.sandboxes_dir / sandbox_id
        if not _ID.match(sandbox_id) or not home.is_dir():
            raise SandboxNotFound(f"Sandbox {sandbox_id} has no files here; create it again")
        handle = self._handles.get(sandbox_id)
        if handle is None:  # stopped by an earlier server process
            handle = self._new_handle(sandbox_id, template, env_vars, internet_access)
            handle.state = SandboxState.STOPPED
        async with self._lock(sandbox_id):
            handle.state = next_state(handle.state, "start")
            env = dict(handle.env_vars)
            with contextlib.suppress(OSError, ValueError):
                saved = json.loads((home / "env.json").read_text())
                env = {str(k): str(v) for k, v in saved.items()}
            try:
                rt = await self._launcher.spawn(
                    uuid.uuid4().hex[:12],
                    home,
                    template=handle.template,
                    internet=handle.internet_access,
                    env_vars=env,
                    sandbox_id=sandbox_id,
                    layer=self._layer(handle.template),
                )
            except BaseException:
                handle.state = SandboxState.STOPPED
                raise
            self._attach(handle, rt)

    def _runtime(self, sandbox_id: str) -> Runtime:
        rt = self._runtimes.get(sandbox_id)
        if rt is None:
            raise SandboxStateConflict(f"Sandbox {sandbox_id} is not running")
        return rt

    async def _thaw(self, sandbox_id: str) -> None:
        assert self._launcher is not None
        await self._launcher.thaw(self._runtime(sandbox_id))

    async def pause(self, sandbox_id: str) -> None:
        """Freeze every process of the sandbox (cgroup freezer, or SIGSTOP without cgroups)."""
        handle = self.get(sandbox_id)
        async with self._lock(sandbox_id):
            state = next_state(handle.state, "pause")
            assert self._launcher is not None
            await self._launcher.freeze(self._runtime(sandbox_id))
            handle.state = state

    async def resume(self, sandbox_id: str) -> None:
        """Thaw a paused sandbox."""
        handle = self.get(sandbox_id)
        async with self._lock(sandbox_id):
            state = next_state(handle.state, "resume")
            await self._thaw(sandbox_id)
            handle.state = state

    async def delete(self, sandbox_id: str) -> None:
        """Kill the sandbox and remove everything it had."""
        if not _ID.match(sandbox_id):
            return
        handle = self._handles.get(sandbox_id)
        if handle is not None:
            async with self._lock(sandbox_id):
                if handle.state is SandboxState.PAUSED:
                    await self._thaw(sandbox_id)
                await self._teardown(handle)
                handle.state = SandboxState.DELETED
                self._handles.pop(sandbox_id, None)
                self._locks.pop(sandbox_id, None)
        await asyncio.to_thread(shutil.rmtree, self.sandboxes_dir / sandbox_id, True)

    async def remove_layer(self, template_id: str) -> None:
        if _ID.match(template_id):
            await asyncio.to_thread(shutil.rmtree, self.layers_dir / template_id, True)

    # -- data plane ----------------------------------------------------------------------------
    def _running(self, sandbox_id: str) -> SandboxHandle:
        handle = self._handles.get(sandbox_id)
        if handle is None or handle.state is not SandboxState.RUNNING:
            state = handle.state.value if handle else "stopped"
            raise SandboxStateConflict(
                f"Sandbox {sandbox_id} is {state}; "
                + ("resume it first" if state == "paused" else "start it first")
            )
        return handle

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
        handle = self._running(sandbox_id)
        try:
            status, answer_headers, body = await handle.request(
                method,
                path,
                json=json,
                params=params,
                content=content,
                headers=dict(headers) if headers else None,
                timeout=timeout,
            )
        except httpx.InvalidURL as exc:
            raise BadRequest(f"Invalid path or query: {exc}") from None
        except SandboxStateConflict:
            await self._check_agent(handle)
            raise
        return DataPlaneResponse(status, answer_headers, body)

    async def _check_agent(self, handle: SandboxHandle) -> None:
        """agentd did not answer: if it is gone while the rest of the sandbox lives on (the
        zygote only hears of bubblewrap's exit), the sandbox is stopped, with the reason, so
        it is not left `running` with every call refused."""
        rt = self._runtimes.get(handle.id)
        if rt is None or not rt.agentd_pid:
            return
        # a dying process closes its sockets a moment before /proc shows it gone
        for _ in range(10):
            if not alive(rt.agentd_pid):
                break
            await asyncio.sleep(0.05)
        else:
            return
        if handle.state is not SandboxState.RUNNING:
            return
        oom = rt.cgroup.oom_kills() if rt.cgroup else 0
        handle.reason = (
            "the sandbox's agent exited"
            + (f"; the out-of-memory killer ended {oom} process(es)" if oom else "")
            + "; start the sandbox again to use it"
        )
        handle.state = SandboxState.STOPPED
        asyncio.get_running_loop().create_task(self._teardown(handle))
        for listener in self._listeners:
            listener(handle.id, handle.reason)

    @contextlib.asynccontextmanager
    async def websocket(
        self, sandbox_id: str, path: str, *, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[DataPlaneSocket]:
        handle = self._running(sandbox_id)
        async with handle.websocket(path, headers=dict(headers) if headers else None) as ws:
            yield ws

    # -- shutdown ------------------------------------------------------------------------------
    async def close(self) -> None:
        """Stop every sandbox (their files stay), the zygotes, and remove the runtime directory."""
        if not self._opened:
            return
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(BaseException):
                await self._recovery
        if self._quota is not None:
            await self._quota.stop()
        if self._pool is not None:
            await self._pool.close()
        for handle in list(self._handles.values()):
            if handle.id in self._runtimes:
                if handle.state is SandboxState.PAUSED:
                    with contextlib.suppress(Exception):
                        await self._thaw(handle.id)
                await self._teardown(handle)
                handle.state = SandboxState.STOPPED
        if self._zygote is not None:
            await self._zygote.close()
        if self.cgroups is not None:  # this manager's parent cgroups, empty by now
            await asyncio.to_thread(self.cgroups.destroy)
        await asyncio.to_thread(shutil.rmtree, self.run_dir, True)
        self._opened = False
