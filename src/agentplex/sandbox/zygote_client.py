"""Host side of the zygote: start it, ask it to spawn sandboxes, hear when they exit."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentplex.sandbox.errors import SandboxError, SandboxStartFailed

ExitCallback = Callable[[str, int, int], None]  # key, pid, exit status


class ZygoteClient:
    def __init__(self, log_path: Path, on_exit: ExitCallback, *, light: bool = False) -> None:
        self.log_path = log_path
        self.on_exit = on_exit
        self.light = light
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._seq = itertools.count()

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    async def start(self, environ: dict[str, str], timeout: float = 120.0) -> None:  # noqa: ASYNC109
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
            raise SandboxError(f"the sandbox zygote failed to start; see {self.log_path}")
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    async def _read_loop(self) -> None:
        assert self._reader is not None
        while line := await self._reader.readline():
            msg = json.loads(line)
            event, key = msg.get("event"), msg.get("key")
            if event in ("ready", "failed"):
                fut = self._waiting.pop(key, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
            elif event == "exited":
                self.on_exit(key, msg["pid"], msg["status"])
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_result({"event": "failed", "error": "the sandbox zygote died"})
        self._waiting.clear()

    async def spawn(self, req: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:  # noqa: ASYNC109
        """Start one sandbox; returns the zygote's ready event (pids)."""
        if self._writer is None or self._task is None or self._task.done():
            raise SandboxStartFailed("the sandbox zygote is not running")
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[req["key"]] = fut
        self._writer.write(json.dumps({"op": "spawn", **req}).encode() + b"\n")
        try:
            msg = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self._waiting.pop(req["key"], None)
            raise SandboxStartFailed(f"the sandbox did not start within {timeout:g}s") from None
        if msg.get("event") != "ready":
            raise SandboxStartFailed(f"the sandbox failed to start: {msg.get('error')}")
        return msg

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._task, 2.0)
