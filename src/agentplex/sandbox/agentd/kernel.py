"""agentd's side of the Python kernel: fork it on first use, send code, stream its output.

One kernel per sandbox, executions serialized. A timeout interrupts the kernel (SIGINT, like
Jupyter's interrupt: variables survive); if it does not answer within a grace period it is
killed and the next execution starts a fresh one (the answer says the state was lost).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import os
import resource
import signal
import socket
import time
from typing import Any

from agentplex.sandbox import nsutil
from agentplex.sandbox.agentd import identity
from agentplex.sandbox.agentd.processes import OutputSink, RunResult, kill_group, make_victim

INTERRUPT_GRACE = 2.0


class PythonKernel:
    def __init__(self) -> None:
        self.pid = 0
        self.lock = asyncio.Lock()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._fds: dict[int, str] = {}
        self._decoders: dict[str, codecs.IncrementalDecoder] = {}
        self._parts: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._sink: OutputSink | None = None
        self._seq = 0
        self._prestart: asyncio.Task[None] | None = None

    def prestart(self) -> None:
        """Fork the kernel now (in the background), so the first execution need not."""

        async def _go() -> None:
            async with self.lock:
                if not self.alive:
                    await self._spawn()

        self._prestart = asyncio.get_running_loop().create_task(_go())

    @property
    def alive(self) -> bool:
        return self.pid != 0

    async def _spawn(self) -> None:
        parent, child = socket.socketpair()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the kernel process
            try:
                os.setsid()
                identity.become_user()
                nsutil.set_process_name("python3 (kernel)")  # not "agentd": pkill agentd spares it
                os.dup2(out_w, 1)
                os.dup2(err_w, 2)
                ctl = os.dup2(child.fileno(), 3, inheritable=False)
                os.closerange(4, 1 << 16)  # sockets and pipes of agentd are not the kernel's
                from agentplex.sandbox.agentd.pykernel import kernel_main

                kernel_main(ctl)
            finally:
                os._exit(70)
        child.close()
        os.close(out_w)
        os.close(err_w)
        make_victim(pid)
        self.pid = pid
        loop = asyncio.get_running_loop()
        for fd, name in ((out_r, "stdout"), (err_r, "stderr")):
            os.set_blocking(fd, False)
            self._fds[fd] = name
            self._decoders[name] = codecs.getincrementaldecoder("utf-8")(errors="replace")
            loop.add_reader(fd, self._read, fd)
        self._reader, self._writer = await asyncio.open_connection(sock=parent)

    def _read(self, fd: int) -> bool:
        name = self._fds.get(fd)
        if name is None:
            return False
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(fd)
            return False
        text = self._decoders[name].decode(data)
        self._parts[name].append(text)
        if self._sink is not None and text:
            self._sink(name, text)
        return True

    def _drain(self) -> None:
        for fd in list(self._fds):
            while self._read(fd):
                pass

    def _reap(self) -> str:
        """Forget the dead (or killed) kernel; describe how it ended."""
        how = "exited"
        if self.pid:
            kill_group(self.pid)
            with contextlib.suppress(ChildProcessError):
                _, status = os.waitpid(self.pid, 0)
                if os.WIFSIGNALED(status):
                    sig = os.WTERMSIG(status)
                    how = f"was killed by {signal.Signals(sig).name}"
                    if sig == signal.SIGKILL:
                        how += " (out of memory, a timeout, or a kill by the sandbox's own code)"
                else:
                    how = f"exited with code {os.WEXITSTATUS(status)}"
        loop = asyncio.get_running_loop()
        for fd in self._fds:
            loop.remove_reader(fd)
            os.close(fd)
        self._fds.clear()
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
        self.pid = 0
        return how

    async def _reply(self, seq: int, timeout: float | None) -> dict[str, Any] | None:  # noqa: ASYNC109
        assert self._reader is not None
        while True:
            line = await asyncio.wait_for(self._reader.readline(), timeout)
            if not line:
                return None
            reply: dict[str, Any] = json.loads(line)
            if reply.get("id") == seq:
                return reply

    async def execute(
        self,
        code: str,
        *,
        workdir: str,
        env: dict[str, str],
        base_env: dict[str, str],
        timeout: float | None,  # noqa: ASYNC109
        sink: OutputSink | None = None,
        warm: bool = False,
    ) -> RunResult:
        """Run `code` in the kernel; rich fields land in `RunResult.extra`. `warm`: a
        throwaway cell that leaves no history (the kernel's first cell touches many pages)."""
        async with self.lock:
            start = time.perf_counter()
            lost = ""
            if self.alive and self._exited():
                # killed between executions (by the sandbox's own code, e.g. `kill -9 -1`)
                lost = (
                    f"The Python kernel {self._reap()} since the last execution; its variables"
                    " are lost and this execution ran in a fresh kernel\n"
                )
            if not self.alive:
                await self._spawn()
            assert self._writer is not None
            self._parts = {"stdout": [], "stderr": []}
            self._sink = sink
            self._seq += 1
            req = {"id": self._seq, "code": code, "workdir": workdir, "env": env}
            req["base_env"] = base_env
            # a pooled sandbox's kernel was forked before /_configure lowered agentd's limit
            req["fsize"] = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
            if warm:
                req["warm"] = True
            timed_out = False
            note = ""
            try:
                self._writer.write(json.dumps(req).encode() + b"\n")
                reply = await self._reply(self._seq, timeout)
            except ConnectionError:  # it died just now: reported below like any other death
                reply = None
            except TimeoutError:
                timed_out = True
                kill_group(self.pid, signal.SIGINT)
                try:
                    reply = await self._reply(self._seq, INTERRUPT_GRACE)
                    note = f"\nExecution timed out after {timeout:g}s and was interrupted\n"
                except TimeoutError:
                    reply = None
            self._drain()
            if reply is None:
                how = self._reap()
                if timed_out:
                    note = (
                        f"\nExecution timed out after {timeout:g}s; the kernel did not stop on"
                        " interrupt and was killed: its variables are lost\n"
                    )
                else:
                    note = (
                        f"\nThe Python kernel {how}; its variables are lost and the next"
                        " execution starts a fresh kernel\n"
                    )
                reply = {"success": False, "exit_code": 137, "kernel_died": True}
            self._sink = None
            stderr = lost + "".join(self._parts["stderr"]) + note
            if note and sink is not None:
                sink("stderr", note)
            extra = {k: v for k, v in reply.items() if k not in ("id", "success", "exit_code")}
            return RunResult(
                stdout="".join(self._parts["stdout"]),
                stderr=stderr,
                exit_code=124 if timed_out else int(reply.get("exit_code", 1)),
                execution_time=time.perf_counter() - start,
                timed_out=timed_out,
                pid=self.pid,
                extra=extra,
            )

    def _exited(self) -> bool:
        """Whether the kernel process is gone (a zombie we have not reaped yet)."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except (OSError, IndexError):
            return True

    def close(self) -> None:
        if self.pid:
            with contextlib.suppress(RuntimeError):
                self._reap()
