"""agentd's side of the Python kernel: fork it on first use, send code, stream its output.

One kernel per sandbox, executions serialized. A timeout interrupts the kernel (SIGINT, like
Jupyter's interrupt: variables survive); if it does not answer within a grace period it is
killed and the next execution starts a fresh one (the answer says the state was lost). An
execution whose caller goes away (its task is cancelled) is interrupted the same way, so the
next one need not wait for it. A timeout counts from the request's arrival: time spent
queued behind another cell is part of it.
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
from agentplex.sandbox.agentd.processes import (
    MAX_CAPTURE,
    TRUNCATED,
    OutputSink,
    RunResult,
    exit_code,
    expired,
    kill_group,
    make_victim,
    remaining,
)

INTERRUPT_GRACE = 2.0
# One cell's rich output (figures, tables) as one JSON line: bounded like stdout/stderr so
# that neither agentd nor the server relaying the answer holds more than a few of these.
MAX_REPLY = 2 * MAX_CAPTURE
_TOO_LARGE = {
    "ename": "OutputTooLarge",
    "evalue": f"the cell's rich output is over {MAX_REPLY // 1024 // 1024} MiB and was dropped",
}
RESTARTED = (
    "\nexit() restarted the Python kernel: its variables are gone and the next execution"
    " runs in a fresh kernel\n"
)


class PythonKernel:
    def __init__(self) -> None:
        self.pid = 0
        self.lock = asyncio.Lock()
        self._queued = 0  # executions waiting for the lock
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._fds: dict[int, str] = {}
        self._decoders: dict[str, codecs.IncrementalDecoder] = {}
        self._parts: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._sizes = {"stdout": 0, "stderr": 0}  # characters kept of this execution's output
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
        self._reader, self._writer = await asyncio.open_connection(sock=parent, limit=MAX_REPLY)

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
        self._keep(name, self._decoders[name].decode(data))
        return True

    def _keep(self, name: str, text: str) -> None:
        """Keep (and stream) an execution's output up to MAX_CAPTURE characters per stream;
        the rest is read and dropped, with one marker, as for commands (else a cell printing
        gigabytes grows agentd until the OOM killer takes it)."""
        size = self._sizes[name]
        if not text or size > MAX_CAPTURE:
            return
        if size + len(text) > MAX_CAPTURE:
            text = text[: MAX_CAPTURE - size] + TRUNCATED
        self._sizes[name] = size + len(text)
        self._parts[name].append(text)
        if self._sink is not None:
            self._sink(name, text)

    def _drain(self) -> None:
        for fd in list(self._fds):
            while self._read(fd):
                pass

    def _reap(self) -> tuple[str, int]:
        """Forget the dead (or killed) kernel; how it ended, and its exit code as a shell
        reports it (128 + N for a death by signal N)."""
        how, code = "exited", 1
        if self.pid:
            kill_group(self.pid)
            with contextlib.suppress(ChildProcessError):
                _, status = os.waitpid(self.pid, 0)
                code = exit_code(os.waitstatus_to_exitcode(status))
                if os.WIFSIGNALED(status):
                    sig = os.WTERMSIG(status)
                    how = f"was killed by {signal.Signals(sig).name}"
                    if sig == signal.SIGKILL:
                        how += " (out of memory, a timeout, or a kill by the sandbox's own code)"
                else:
                    how = f"exited with code {code}"
        loop = asyncio.get_running_loop()
        for fd in self._fds:
            loop.remove_reader(fd)
            os.close(fd)
        self._fds.clear()
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
        self.pid = 0
        return how, code

    async def _reply(self, seq: int, timeout: float | None) -> dict[str, Any] | None:  # noqa: ASYNC109
        assert self._reader is not None
        oversized = False
        while True:
            try:
                line = await asyncio.wait_for(self._reader.readline(), timeout)
            except ValueError:  # longer than MAX_REPLY: dropped up to its end
                oversized = True
                continue
            if not line:
                return None
            if oversized:  # the cell's reply (one cell at a time), ended
                return {"id": seq, "exit_code": 1, "error": _TOO_LARGE}
            try:
                reply = json.loads(line)
            except ValueError:
                continue
            if isinstance(reply, dict) and reply.get("id") == seq:
                return reply

    async def _interrupt(self, seq: int) -> dict[str, Any] | None:
        """SIGINT the running cell (and what it started); its reply, or None if the kernel
        did not answer within the grace period (or died)."""
        kill_group(self.pid, signal.SIGINT)
        try:
            return await self._reply(seq, INTERRUPT_GRACE)
        except (TimeoutError, ConnectionError):
            return None

    async def _acquire(self, timeout: float | None, arrived: float) -> bool:  # noqa: ASYNC109
        """Take the kernel within what is left of the timeout; False if that ran out first."""
        if not self.lock.locked() and not self._queued:
            await self.lock.acquire()  # free: taken at once, no timer needed
            return True
        self._queued += 1
        try:
            await asyncio.wait_for(self.lock.acquire(), remaining(timeout, arrived))
        except TimeoutError:
            return False
        finally:
            self._queued -= 1
        return True

    async def execute(
        self,
        code: str,
        *,
        workdir: str | None,
        env: dict[str, str],
        base_env: dict[str, str],
        timeout: float | None,  # noqa: ASYNC109
        sink: OutputSink | None = None,
        warm: bool = False,
        arrived: float | None = None,
        home: str = "/workspace",
    ) -> RunResult:
        """Run `code` in the kernel; rich fields land in `RunResult.extra`. `workdir` None
        keeps the kernel's own working directory (a fresh kernel starts in `home`). `warm`:
        a throwaway cell that leaves no history (the kernel's first cell touches many pages).
        `timeout` counts from `arrived` (time.monotonic()), waiting for the kernel included."""
        arrived = time.monotonic() if arrived is None else arrived
        if not await self._acquire(timeout, arrived):
            return expired(timeout, arrived)
        try:
            if remaining(timeout, arrived) == 0:  # the kernel came free just too late
                return expired(timeout, arrived)
            req: dict[str, Any] = {"code": code, "workdir": workdir, "home": home, "env": env}
            req["base_env"] = base_env
            if warm:
                req["warm"] = True
            return await self._run(req, timeout, arrived, sink)
        finally:
            self.lock.release()

    async def _run(
        self,
        req: dict[str, Any],
        timeout: float | None,  # noqa: ASYNC109
        arrived: float,
        sink: OutputSink | None,
    ) -> RunResult:
        start = time.perf_counter()
        lost = ""
        if self.alive and (self._writer is None or self._exited()):
            # killed between executions (by the sandbox's own code, e.g. `kill -9 -1`)
            lost = (
                f"The Python kernel {self._reap()[0]} since the last execution; its variables"
                " are lost and this execution ran in a fresh kernel\n"
            )
        if not self.alive:
            await self._spawn()
        assert self._writer is not None
        self._parts = {"stdout": [], "stderr": []}
        self._sizes = {"stdout": 0, "stderr": 0}
        self._sink = sink
        self._seq += 1
        seq = req["id"] = self._seq
        # a pooled sandbox's kernel was forked before /_configure lowered agentd's limit
        req["fsize"] = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        timed_out = False
        note = ""
        try:
            self._writer.write(json.dumps(req).encode() + b"\n")
            reply = await self._reply(seq, remaining(timeout, arrived))
        except ConnectionError:  # it died just now: reported below like any other death
            reply = None
        except TimeoutError:
            timed_out = True
            reply = await self._interrupt(seq)
            if reply is not None:
                note = f"\nExecution timed out after {timeout:g}s and was interrupted\n"
        except asyncio.CancelledError:  # the caller went away: free the kernel for the next
            self._abandon(await self._interrupt(seq))
            raise
        self._drain()
        if reply is None:
            how, code = self._reap()
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
            reply = {"success": False, "kernel_died": True}
        else:
            code = int(reply.get("exit_code", 1))
            if reply.pop("exit_requested", False):  # exit()/quit(), as in Jupyter: a restart
                self._reap()
                note += RESTARTED
                await self._spawn()
        if timed_out:
            code = 124
        self._sink = None
        stderr = lost + "".join(self._parts["stderr"]) + note
        if note and sink is not None:
            sink("stderr", note)
        extra = {k: v for k, v in reply.items() if k not in ("id", "success", "exit_code")}
        return RunResult(
            stdout="".join(self._parts["stdout"]),
            stderr=stderr,
            exit_code=code,
            execution_time=time.perf_counter() - start,
            timed_out=timed_out,
            pid=self.pid,
            extra=extra,
        )

    def _abandon(self, reply: dict[str, Any] | None) -> None:
        """After an interrupt nobody waits for: drop the output; a kernel that did not stop
        (or asked to exit) goes, the next execution starts a fresh one."""
        self._drain()
        self._sink = None
        if reply is None or reply.get("exit_requested"):
            self._reap()

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
