"""Host side of the zygotes: start them, ask them to spawn sandboxes, hear when they exit.

Two zygote processes (one with `light=True`, where the scientific stack is not wanted):

- the *light* one imports only agentd and its server (~35 MiB, a fork costs < 1 ms). It starts
  every sandbox's bubblewrap ("launch": a fork that execs bwrap, so the image forked should be
  small) and forks agentd for sandboxes that do not run a Python kernel (bash, node, go);
- the *full* one also holds IPython, numpy, pandas and matplotlib, pre-imported, and forks agentd
  for Python sandboxes ("enter"), which then share those pages copy-on-write.

Splitting the work halves what the full zygote does per sandbox (one fork of a ~120 MiB image
instead of three), and the two run in parallel on a burst of creates.

Supervision: a zygote that exits while it is wanted (killed, crashed) fails the requests it was
answering and is reported to `on_death`; the manager restarts it with `restart_dead`. The
light zygote is also the janitor: told the runtime directory and the parent cgroups, it kills
every sandbox process and removes them when its control socket closes because the server died
(even of SIGKILL), so nothing of a dead server waits for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentplex.errors import SandboxUnavailable

ExitCallback = Callable[[str, int, int], None]  # key, pid, exit status
DeathCallback = Callable[[bool], None]  # light: whether it was the light zygote that died
DIED = (
    "the sandbox fork server (zygote) exited while starting this sandbox; it is being "
    "restarted, try again"
)


class _Zygote:
    """One zygote process and its JSON-line control socket."""

    def __init__(
        self,
        log_path: Path,
        on_exit: ExitCallback,
        *,
        light: bool,
        on_death: DeathCallback | None = None,
        janitor: dict[str, Any] | None = None,
    ) -> None:
        self.log_path = log_path
        self.on_exit = on_exit
        self.on_death = on_death
        self.janitor = janitor  # {"run_dir", "cgroups"}: what to remove if the server dies
        self.light = light
        self.closing = False
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self, environ: dict[str, str], timeout: float) -> None:  # noqa: ASYNC109
        self.closing = False
        self._waiting = {}
        parent, child = socket.socketpair()
        env = dict(environ)
        if self.light:
            env["AGENTPLEX_ZYGOTE_LIGHT"] = "1"
        src = str(Path(__file__).resolve().parents[2])  # noqa: ASYNC240
        env["PYTHONPATH"] = os.pathsep.join([src, *sys.path[1:]])
        with open(self.log_path, "ab") as log:  # noqa: ASYNC230
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "agentplex.sandbox.zygote",
                str(child.fileno()),
                pass_fds=(child.fileno(),),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd="/",
            )
        child.close()
        self._reader, self._writer = await asyncio.open_connection(sock=parent)
        try:
            line = await asyncio.wait_for(self._reader.readline(), timeout)
        except TimeoutError:
            line = b""
        if json.loads(line or b"{}").get("event") != "up":
            await self.close()
            raise SandboxUnavailable(f"the sandbox zygote failed to start; see {self.log_path}")
        if self.janitor is not None:
            self._writer.write(json.dumps({"op": "janitor", **self.janitor}).encode() + b"\n")
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    async def _read_loop(self) -> None:
        assert self._reader is not None
        with contextlib.suppress(ConnectionError):
            await self._serve_events(self._reader)
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_result({"event": "failed", "error": DIED})
        self._waiting.clear()
        if not self.closing and self.on_death is not None:
            self.on_death(self.light)

    async def _serve_events(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            event, key = msg.get("event"), msg.get("key")
            if event in ("ready", "failed", "launched"):
                fut = self._waiting.pop(key, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
            elif event == "exited":
                self.on_exit(key, msg["pid"], msg["status"])

    async def request(self, op: str, req: dict[str, Any], timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
        if self._writer is None or not self.running:
            raise SandboxUnavailable(
                "the sandbox fork server (zygote) is not running; it is being restarted, "
                "try again in a moment"
            )
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[req["key"]] = fut
        self._writer.write(json.dumps({**req, "op": op}).encode() + b"\n")
        try:
            msg = await asyncio.wait_for(fut, max(timeout, 0.001))
        except TimeoutError:
            self._waiting.pop(req["key"], None)
            raise
        if msg.get("event") == "failed":
            if msg.get("error") == DIED:
                raise SandboxUnavailable(DIED)
            raise SandboxUnavailable(f"the sandbox failed to start: {msg.get('error')}")
        return msg

    async def close(self) -> None:
        self.closing = True
        if self._writer is not None:
            self._writer.close()
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._task, 2.0)


class ZygoteClient:
    """The zygotes of one manager. `light=True`: no scientific stack anywhere (one process)."""

    def __init__(
        self,
        log_path: Path,
        on_exit: ExitCallback,
        *,
        light: bool = False,
        on_death: DeathCallback | None = None,
        janitor: dict[str, Any] | None = None,
    ) -> None:
        self.light = light
        self._small = _Zygote(log_path, on_exit, light=True, on_death=on_death, janitor=janitor)
        self._full = None if light else _Zygote(log_path, on_exit, light=False, on_death=on_death)
        self.restarts = 0  # zygotes started again after they died

    @property
    def pids(self) -> list[int]:
        """The zygotes' process ids (those running)."""
        zygotes = (self._small, self._full)
        return [z.proc.pid for z in zygotes if z is not None and z.proc and z.running]

    @property
    def running(self) -> bool:
        return all(z.running for z in (self._small, self._full) if z is not None)

    async def restart_dead(self, environ: dict[str, str], timeout: float = 120.0) -> None:  # noqa: ASYNC109
        """Start again each zygote that died (the live one keeps its sandboxes)."""
        for zygote in (self._small, self._full):
            if zygote is not None and not zygote.running:
                await zygote.close()
                await zygote.start(environ, timeout)
                self.restarts += 1

    @property
    def pid(self) -> int:
        zygote = self._full or self._small
        return zygote.proc.pid if zygote.proc else 0

    async def start(self, environ: dict[str, str], timeout: float = 120.0) -> None:  # noqa: ASYNC109
        zygotes = [z for z in (self._small, self._full) if z is not None]
        results = await asyncio.gather(
            *(z.start(environ, timeout) for z in zygotes), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                await self.close()
                raise result

    async def spawn(self, req: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:  # noqa: ASYNC109
        """Start one sandbox; returns the ready event (pids). `req["python"]`: agentd comes
        from the full zygote (a Python kernel shares its pre-imported pages)."""
        full = self._full if req.get("python", True) else None
        deadline = time.monotonic() + timeout
        try:
            if full is None or not req.get("bwrap"):
                return await (full or self._small).request("spawn", req, timeout)
            launched = await self._small.request("launch", req, timeout)
            enter = {**req, "pid1": launched["pid1"], "bwrap_pid": launched["bwrap_pid"]}
            return await full.request("enter", enter, deadline - time.monotonic())
        except TimeoutError:
            raise SandboxUnavailable(f"the sandbox did not start within {timeout:g}s") from None

    async def close(self) -> None:
        for zygote in (self._full, self._small):
            if zygote is not None:
                await zygote.close()
