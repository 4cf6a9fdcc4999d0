"""SandboxManager: the async API the HTTP layer drives (create, stop, start, pause, resume,
delete), with the warm pool, records on disk and the workspace quota watch.

    async with SandboxManager(data_dir, pool_size=4) as manager:
        handle = await manager.create("python", env_vars={"A": "1"})
        status, headers, body = await handle.request("POST", "/execute", json={"code": "1+1"})
        await manager.pause(handle.id); await manager.resume(handle.id)
        await manager.stop(handle.id); await manager.start(handle.id)   # files kept
        await manager.delete(handle.id)                                  # all gone

Layout: `<data_dir>/sandboxes/<id>/{workspace/, sandbox.json, env.json}`. Runtime state
(agentd socket, logs) lives under a short per-manager directory in /tmp, because unix socket
paths are limited to 108 bytes.
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
from pathlib import Path
from typing import Any

from agentplex.sandbox.agentd.config import ADOPT_FILE
from agentplex.sandbox.cgroups import CgroupRoot
from agentplex.sandbox.errors import (
    IsolationUnavailable,
    SandboxError,
    SandboxNotFound,
)
from agentplex.sandbox.handle import SandboxHandle
from agentplex.sandbox.isolation import IsolationInfo, detect_isolation
from agentplex.sandbox.launcher import Launcher, Runtime
from agentplex.sandbox.pool import WarmPool
from agentplex.sandbox.quota import QuotaWatch
from agentplex.sandbox.state import SandboxState, next_state
from agentplex.sandbox.templates import Resources, Template, builtin_templates, resolve_template
from agentplex.sandbox.zygote_client import ZygoteClient

log = logging.getLogger(__name__)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
DEFAULT_SANDBOX_UID = 10000


class SandboxManager:
    """Every sandbox of one server process. Use `async with` (or `open()` / `close()`)."""

    def __init__(
        self,
        data_dir: Path,
        isolation_required: bool = True,
        allow_unisolated: bool = False,
        pool_size: int = 2,
        *,
        internet_pool_size: int = 0,
        isolation: IsolationInfo | None = None,
        templates: dict[str, Template] | None = None,
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
        self.isolation_required = isolation_required
        self.allow_unisolated = allow_unisolated
        self.isolation = isolation or detect_isolation(sandbox_uid if os.geteuid() == 0 else None)
        self.templates = templates if templates is not None else builtin_templates()
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
        self._zygote: ZygoteClient | None = None
        self._launcher: Launcher | None = None
        self._pool: WarmPool[Runtime] | None = None
        self._quota: QuotaWatch | None = None
        self._opened = False
        self._open_lock = asyncio.Lock()

    # -- set-up --------------------------------------------------------------------------------
    @property
    def unisolated_allowed(self) -> bool:
        return self.allow_unisolated or not self.isolation_required

    def status(self) -> dict[str, Any]:
        """Isolation, limits and pool state, for /status and start-up logs."""
        pool = self._pool
        return {
            "isolation": self.isolation.kind,
            "isolation_reason": self.isolation.reason,
            "unisolated_allowed": self.unisolated_allowed,
            "cgroups": "v1" if self.cgroups else "unavailable (no memory/cpu/pids limits)",
            "pool": {
                "target": self.pool_sizes[False],
                "ready": pool.size(False) if pool else 0,
                "last_error": pool.last_error if pool else None,
            },
            "sandboxes": len(self._handles),
        }

    async def open(self) -> None:
        """Start the zygote and the warm pool; load sandboxes left by a previous run (stopped)."""
        async with self._open_lock:
            if self._opened:
                return
            if not self.isolation.isolated:
                log.warning(
                    "SANDBOX ISOLATION UNAVAILABLE (%s): sandboxes %s",
                    self.isolation.reason,
                    "run UNISOLATED" if self.unisolated_allowed else "are refused",
                )
            self.sandboxes_dir.mkdir(parents=True, exist_ok=True)
            self.run_dir.mkdir(mode=0o711, exist_ok=True)
            for stale in self.run_dir.iterdir():
                shutil.rmtree(stale, ignore_errors=True)
            self.cgroups = await asyncio.to_thread(CgroupRoot.detect)
            if self.cgroups is not None:
                await asyncio.to_thread(self.cgroups.sweep)
            else:
                log.warning(
                    "SANDBOX LIMITS UNAVAILABLE: no writable cgroup v1 memory, cpu and pids "
                    "hierarchies (cgroup v2 is not supported yet); sandboxes run WITHOUT "
                    "memory, CPU or process limits"
                )
            self._recover()
            self._zygote = ZygoteClient(
                self.run_dir / "zygote.log", self._on_exit, light=not self.preload_scientific
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
            if self.isolation.isolated or self.unisolated_allowed:
                self._pool = WarmPool(self.pool_sizes, self._pool_spawn, self._pool_discard)
                self._pool.kick()
            self._quota = QuotaWatch(self.list, self.quota_interval)
            self._quota.start()

    async def __aenter__(self) -> SandboxManager:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _recover(self) -> None:
        for path in self.sandboxes_dir.iterdir():
            if path.name.startswith("."):
                shutil.rmtree(path, ignore_errors=True)  # a pooled sandbox's leftovers
                continue
            try:
                rec = json.loads((path / "sandbox.json").read_text())
                template = resolve_template(self.templates, rec["template"])
            except (OSError, ValueError, KeyError, SandboxError):
                continue
            handle = self._new_handle(
                rec["id"],
                template,
                rec.get("internet_access", False),
                rec.get("env_vars", {}),
                rec.get("created_at", 0.0),
            )
            handle.state = SandboxState.STOPPED
            handle.reason = "the server restarted; start the sandbox to use it again"
            self._handles[handle.id] = handle

    async def wait_pool(self, timeout: float = 60.0) -> None:  # noqa: ASYNC109
        """Wait until the warm pool is full (benchmarks and tests)."""
        await self.open()
        if self._pool is not None:
            await self._pool.wait_full(timeout)

    # -- helpers -------------------------------------------------------------------------------
    def _new_handle(
        self, sid: str, template: Template, internet: bool, env: dict[str, str], created: float
    ) -> SandboxHandle:
        return SandboxHandle(
            id=sid,
            template=template,
            internet_access=internet,
            env_vars=dict(env),
            created_at=created,
            isolation=self.isolation.kind,
            workspace=self.sandboxes_dir / sid / "workspace",
        )

    def _lock(self, sid: str) -> asyncio.Lock:
        return self._locks.setdefault(sid, asyncio.Lock())

    def get(self, sandbox_id: str) -> SandboxHandle:
        """The handle of a sandbox; SandboxNotFound if there is none."""
        handle = self._handles.get(sandbox_id)
        if handle is None:
            raise SandboxNotFound(f"sandbox {sandbox_id!r} not found")
        return handle

    def list(self) -> list[SandboxHandle]:
        return sorted(self._handles.values(), key=lambda h: h.created_at)

    def _check_isolation(self) -> None:
        if not self.isolation.isolated and not self.unisolated_allowed:
            raise IsolationUnavailable(
                f"cannot create sandboxes: isolation unavailable ({self.isolation.reason});"
                " install bubblewrap with user namespaces, or allow unisolated sandboxes"
            )

    def _write_record(self, handle: SandboxHandle) -> None:
        rec = {
            "id": handle.id,
            "template": handle.template.id,
            "env_vars": handle.env_vars,
            "internet_access": handle.internet_access,
            "created_at": handle.created_at,
        }
        path = self.sandboxes_dir / handle.id / "sandbox.json"
        path.write_text(json.dumps(rec))

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
        asyncio.get_running_loop().create_task(self._teardown(handle, destroy=True))

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
    async def _pool_spawn(self, internet: bool) -> Runtime:
        assert self._launcher is not None
        key = uuid.uuid4().hex[:12]
        home = self.sandboxes_dir / f".pool-{key}"
        # pooled sandboxes start with the largest limits; adoption lowers them to the template's
        biggest = max(self.templates.values(), key=lambda t: t.resources.disk_mb)
        template = resolve_template(self.templates, None)
        template = Template(
            template.id,
            template.name,
            template.display_name,
            template.language,
            Resources(memory_mb=template.resources.memory_mb, disk_mb=biggest.resources.disk_mb),
        )
        try:
            return await self._launcher.spawn(
                key,
                home,
                template=template,
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
        template: str | Template | None = None,
        *,
        env_vars: dict[str, str] | None = None,
        internet_access: bool = False,
        sandbox_id: str | None = None,
    ) -> SandboxHandle:
        """A running sandbox (from the warm pool when one is ready)."""
        self._check_isolation()
        tpl = resolve_template(self.templates, template)
        sid = sandbox_id or f"sbx-{uuid.uuid4().hex[:16]}"
        if not _ID.match(sid) or sid in self._handles:
            raise SandboxError(f"invalid or duplicate sandbox id {sid!r}")
        await self.open()
        assert self._launcher is not None
        env = {**dict(tpl.env), **(env_vars or {})}
        handle = self._new_handle(sid, tpl, internet_access, env, time.time())
        self._handles[sid] = handle
        home = self.sandboxes_dir / sid
        try:
            # pooled sandboxes have no template layer mounted: layered templates start cold
            pooled = self._pool is not None and tpl.layer is None
            rt = self._pool.take(internet_access) if pooled and self._pool else None
            if rt is not None:
                os.rename(self.sandboxes_dir / f".pool-{rt.key}", home)
                self._launcher.retarget(rt, home, tpl)
                self._adopt(handle, rt)
                self._attach(handle, rt)
            else:
                rt = await self._launcher.spawn(
                    uuid.uuid4().hex[:12],
                    home,
                    template=tpl,
                    internet=internet_access,
                    env_vars=handle.env_vars,
                    sandbox_id=sid,
                )
                self._attach(handle, rt)
            self._write_record(handle)
        except BaseException:
            self._handles.pop(sid, None)
            await self._teardown(handle, destroy=True)
            shutil.rmtree(home, ignore_errors=True)
            raise
        return handle

    def _attach(self, handle: SandboxHandle, rt: Runtime) -> None:
        self._runtimes[handle.id] = rt
        self._by_key[rt.key] = handle.id
        handle.socket_path = rt.socket_path
        handle._key = rt.key
        client, rt.client = rt.client, None
        handle.adopt(client)
        handle.state = next_state(handle.state, "ready")
        handle.reason = ""

    async def _teardown(self, handle: SandboxHandle, *, destroy: bool) -> None:
        await handle.aclose()
        rt = self._runtimes.pop(handle.id, None)
        if rt is None or self._launcher is None:
            return
        self._by_key.pop(rt.key, None)
        env_file = rt.runtime_dir / "env.json"
        with contextlib.suppress(OSError):
            shutil.copyfile(env_file, self.sandboxes_dir / handle.id / "env.json")
        await (self._launcher.destroy(rt) if destroy else self._launcher.kill(rt))

    async def stop(self, sandbox_id: str) -> SandboxHandle:
        """Kill the sandbox's processes; its files (and env) stay for `start`."""
        handle = self.get(sandbox_id)
        async with self._lock(sandbox_id):
            state = next_state(handle.state, "stop")
            await self._teardown(handle, destroy=True)
            handle.state = state
            return handle

    async def start(self, sandbox_id: str) -> SandboxHandle:
        """Bring a stopped sandbox back with its files and environment."""
        handle = self.get(sandbox_id)
        self._check_isolation()
        await self.open()
        assert self._launcher is not None
        async with self._lock(sandbox_id):
            handle.state = next_state(handle.state, "start")
            env = dict(handle.env_vars)
            with contextlib.suppress(OSError, ValueError):
                saved = json.loads((self.sandboxes_dir / sandbox_id / "env.json").read_text())
                env = {str(k): str(v) for k, v in saved.items()}
            try:
                rt = await self._launcher.spawn(
                    uuid.uuid4().hex[:12],
                    self.sandboxes_dir / sandbox_id,
                    template=handle.template,
                    internet=handle.internet_access,
                    env_vars=env,
                    sandbox_id=sandbox_id,
                )
            except BaseException:
                handle.state = SandboxState.STOPPED
                raise
            self._attach(handle, rt)
            return handle

    async def pause(self, sandbox_id: str) -> SandboxHandle:
        """Freeze every process of the sandbox (cgroup freezer, or SIGSTOP without cgroups)."""
        handle = self.get(sandbox_id)
        async with self._lock(sandbox_id):
            state = next_state(handle.state, "pause")
            assert self._launcher is not None
            await self._launcher.freeze(self._runtimes[sandbox_id])
            handle.state = state
            return handle

    async def resume(self, sandbox_id: str) -> SandboxHandle:
        """Thaw a paused sandbox."""
        handle = self.get(sandbox_id)
        async with self._lock(sandbox_id):
            state = next_state(handle.state, "resume")
            assert self._launcher is not None
            await self._launcher.thaw(self._runtimes[sandbox_id])
            handle.state = state
            return handle

    async def delete(self, sandbox_id: str) -> None:
        """Kill the sandbox and remove everything it had."""
        handle = self.get(sandbox_id)
        async with self._lock(sandbox_id):
            next_state(handle.state, "delete")
            if handle.state is SandboxState.PAUSED and self._launcher is not None:
                await self._launcher.thaw(self._runtimes[sandbox_id])
            await self._teardown(handle, destroy=True)
            handle.state = SandboxState.DELETED
            self._handles.pop(sandbox_id, None)
            self._locks.pop(sandbox_id, None)
            await asyncio.to_thread(shutil.rmtree, self.sandboxes_dir / sandbox_id, True)

    async def close(self) -> None:
        """Stop every sandbox (records and files stay) and the zygote."""
        if not self._opened:
            return
        if self._quota is not None:
            await self._quota.stop()
        if self._pool is not None:
            await self._pool.close()
        for handle in list(self._handles.values()):
            if handle.state in (SandboxState.RUNNING, SandboxState.PAUSED, SandboxState.CREATING):
                if handle.state is SandboxState.PAUSED and handle.id in self._runtimes:
                    with contextlib.suppress(Exception):
                        await self._launcher.thaw(self._runtimes[handle.id])  # type: ignore[union-attr]
                await self._teardown(handle, destroy=True)
                handle.state = SandboxState.STOPPED
        if self._zygote is not None:
            await self._zygote.close()
        if self.cgroups is not None:  # this manager's parent cgroups, empty by now
            await asyncio.to_thread(self.cgroups.destroy)
        self._opened = False
