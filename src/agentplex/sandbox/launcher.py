"""Launcher: turns "start a sandbox for this workspace" into a zygote request, and ends it.

It owns the mechanics shared by fresh and pooled sandboxes: runtime directories, cgroups, the
bubblewrap command line, killing, freezing and thawing a sandbox's process tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from agentplex.core.ports import IsolationInfo, Template
from agentplex.errors import SandboxUnavailable
from agentplex.sandbox import seccomp
from agentplex.sandbox.bwrap import bwrap_command, exposed_trees, write_etc
from agentplex.sandbox.cgroups import CgroupRoot, SandboxCgroup
from agentplex.sandbox.handle import agentd_client
from agentplex.sandbox.proctree import descendants
from agentplex.sandbox.zygote_client import ZygoteClient

SOCKET_NAME = "a.sock"
MB = 1024 * 1024


@dataclass
class Runtime:
    """The live part of a running sandbox."""

    key: str
    runtime_dir: Path
    cgroup: SandboxCgroup | None
    bwrap_pid: int
    agentd_pid: int
    internet: bool
    client: httpx.AsyncClient | None = field(default=None, repr=False)  # connected, when warmed

    @property
    def socket_path(self) -> Path:
        return self.runtime_dir / SOCKET_NAME


async def _warm(rt: Runtime) -> None:
    """A throwaway request (and kernel cell) pays copy-on-write faults before anyone waits; the
    client, connected, stays with the runtime for the handle that adopts it."""
    client = agentd_client(str(rt.socket_path))
    try:
        resp = await client.post("/_warm", timeout=30)
    except BaseException:
        await client.aclose()
        raise
    if resp.status_code != 200:
        await client.aclose()
        raise SandboxUnavailable(f"warming the sandbox up failed: {resp.text[:200]}")
    rt.client = client


def _signal_tree(root: int, sig: int) -> None:
    for pid in descendants(root):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


class Launcher:
    def __init__(
        self,
        *,
        isolation: IsolationInfo,
        zygote: ZygoteClient,
        cgroups: CgroupRoot | None,
        run_dir: Path,
        hidden: list[Path],
        sandbox_uid: int | None,
        eager_kernel: bool = True,
    ) -> None:
        self.eager_kernel = eager_kernel
        self.isolation = isolation
        self.zygote = zygote
        self.cgroups = cgroups
        self.run_dir = run_dir
        self.hidden = hidden
        root = os.geteuid() == 0 and sandbox_uid is not None
        # The code runs as `sandbox_uid` on the host; bwrap, its init and agentd as the next
        # uid (the sandbox's "system" uid, 0 inside), so the code can't signal agentd. Only
        # root may map two uids into a user namespace; otherwise both share the server's uid.
        self.user_uid = sandbox_uid if root else None
        self.uid = sandbox_uid + 1 if root and sandbox_uid is not None else None
        self._bwrap: dict[tuple[bool, str | None, bool], list[str]] = {}
        self._exposed = exposed_trees()
        # one generated /etc per network setting (resolver and CA certificates only with it)
        self._etc = {
            net: str(write_etc(run_dir / ("etc-net" if net else "etc"), internet=net))
            for net in (False, True)
        }
        self.seccomp = str(seccomp.write_filter(run_dir / "seccomp.bpf"))

    def _bwrap_args(self, internet: bool, layer: str | None, writable: bool) -> list[str]:
        key = (internet, layer, writable)
        if key not in self._bwrap:
            bwrap = shutil.which("bwrap") or "bwrap"
            self._bwrap[key] = bwrap_command(
                bwrap,
                hidden=self.hidden,
                internet=internet,
                etc_dir=self._etc[internet],
                layer=layer,
                layer_writable=writable,
            )
        return self._bwrap[key]

    def _own(self, path: Path, uid: int | None) -> None:
        if uid is not None and self.isolation.isolated:
            os.chown(path, uid, uid)

    @staticmethod
    def environ() -> dict[str, str]:
        """agentd's own environment: nothing of the server's (keys, database URLs) leaks in."""
        return {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": "/workspace",
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        }

    async def spawn(
        self,
        key: str,
        sandbox_dir: Path,
        *,
        template: Template,
        internet: bool,
        env_vars: dict[str, str],
        sandbox_id: str,
        layer: Path | None = None,
        warm: bool = False,
    ) -> Runtime:
        """Start agentd for the workspace in `sandbox_dir`; returns once it accepts requests.
        `layer`: the host directory of a custom template's layer.
        `warm` (pooled sandboxes, which nobody waits for): returns once it has also served a
        throwaway request and kernel cell, so its first real one is as fast as later ones."""
        runtime = self.run_dir / key
        runtime.mkdir(mode=0o700, exist_ok=True)
        self._own(runtime, self.uid)  # /run/agentd: agentd's socket and state, closed to the code
        workspace = sandbox_dir / "workspace"
        workspace.mkdir(parents=True, exist_ok=True)
        self._own(workspace, self.user_uid)
        isolated = self.isolation.isolated
        if isolated:
            (runtime / "ws").mkdir(exist_ok=True)  # where the zygote binds the workspace
            if layer is not None:
                (runtime / "layer").mkdir(exist_ok=True)  # and a custom template's layer
        else:
            (runtime / "tmp").mkdir(exist_ok=True)
            link = runtime / "workspace"
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            link.symlink_to(workspace)
        cgroup = self.cgroups.create(key) if self.cgroups else None
        if cgroup is not None:
            cgroup.set_limits(template.resources)
        agentd: dict[str, Any] = {
            "socket_path": f"/run/agentd/{SOCKET_NAME}" if isolated else str(runtime / SOCKET_NAME),
            "workspace": "/workspace",
            "workspace_real": "/workspace" if isolated else str(runtime / "workspace"),
            "tmp_real": "/tmp" if isolated else str(runtime / "tmp"),  # noqa: S108
            "state_dir": "/run/agentd" if isolated else str(runtime),
            "env_vars": env_vars,
            "isolation": self.isolation.kind,
            "sandbox_id": sandbox_id,
            "template": template.id,
            "eager_kernel": self.eager_kernel and template.language == "python",
        }
        layer_path = str(layer) if layer is not None else None
        bwrap = self._bwrap_args(internet, layer_path, template.layer_writable)
        req = {
            "key": key,
            "bwrap": bwrap if isolated else None,
            "expose": self._exposed if isolated else None,
            "seccomp": self.seccomp,
            "cgroup_procs": cgroup.procs_files if cgroup else [],
            "cgroup_stats": cgroup.stat_files if cgroup else {},
            "uid": self.uid,
            "user_uid": self.user_uid,
            "log": str(runtime / "bwrap.log"),
            "workspace": str(workspace),
            "layer": layer_path,
            "runtime": str(runtime),
            "fsize_bytes": template.resources.disk_mb * MB,
            "python": template.language == "python",  # forked from the full zygote
            # the zygote attaches slirp4netns and the packet filter (sandbox/network.py)
            "internet": internet and isolated,
            "environ": self.environ(),
            "agentd": agentd,
        }
        try:
            msg = await self.zygote.spawn(req)
        except BaseException:
            if cgroup is not None:
                await asyncio.to_thread(cgroup.destroy)
            shutil.rmtree(runtime, ignore_errors=True)
            raise
        rt = Runtime(key, runtime, cgroup, msg["bwrap_pid"], msg["agentd_pid"], internet)
        if warm:
            try:
                await _warm(rt)
            except BaseException:
                await self.destroy(rt)
                raise
        return rt

    def retarget(self, rt: Runtime, sandbox_dir: Path, template: Template) -> None:
        """Point a pooled sandbox at its new home and its template's limits."""
        if not self.isolation.isolated:
            link = rt.runtime_dir / "workspace"
            tmp = rt.runtime_dir / "workspace.new"
            tmp.symlink_to(sandbox_dir / "workspace")
            os.replace(tmp, link)
        if rt.cgroup is not None:
            rt.cgroup.set_limits(template.resources)

    async def kill(self, rt: Runtime) -> None:
        """End every process of the sandbox (files stay)."""
        if rt.cgroup is not None:
            await asyncio.to_thread(rt.cgroup.kill_all)
            if not rt.cgroup.pids():  # every process of the sandbox is in its cgroup
                return
        root = rt.bwrap_pid or rt.agentd_pid
        if root:
            await asyncio.to_thread(_signal_tree, root, signal.SIGKILL)

    async def destroy(self, rt: Runtime) -> None:
        """Kill, then remove the sandbox's cgroups and runtime directory."""
        if rt.client is not None:
            client, rt.client = rt.client, None
            await client.aclose()
        await self.kill(rt)
        if rt.cgroup is not None:
            await asyncio.to_thread(rt.cgroup.destroy)
        await asyncio.to_thread(shutil.rmtree, rt.runtime_dir, True)

    async def freeze(self, rt: Runtime) -> None:
        if rt.cgroup is not None:
            ok = await asyncio.to_thread(rt.cgroup.freeze)
            if ok:
                return
            rt.cgroup.thaw()
        await asyncio.to_thread(_signal_tree, rt.bwrap_pid or rt.agentd_pid, signal.SIGSTOP)

    async def thaw(self, rt: Runtime) -> None:
        if rt.cgroup is not None:
            await asyncio.to_thread(rt.cgroup.thaw)
        await asyncio.to_thread(_signal_tree, rt.bwrap_pid or rt.agentd_pid, signal.SIGCONT)
