"""Child processes of agentd: run with a timeout and streamed output, or in the background."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agentplex.sandbox.agentd import identity

OutputSink = Callable[[str, str], None]  # (stream name "stdout"|"stderr", text)
MAX_CAPTURE = 8 * 1024 * 1024  # per stream; the rest is dropped with a marker
TRUNCATED = "\n[output truncated]\n"
# agentd protects itself from the OOM killer; everything it starts is a preferred victim.
CHILD_OOM_SCORE_ADJ = "500"


@dataclass
class RunResult:
    stdout: str
    stderr: str
    exit_code: int
    execution_time: float
    timed_out: bool = False
    pid: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def exit_code(returncode: int) -> int:
    """A process's exit status as a shell reports it: a death by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def remaining(timeout: float | None, arrived: float | None) -> float | None:
    """What is left of `timeout` counted from `arrived` (time.monotonic()), never negative."""
    if timeout is None or arrived is None:
        return timeout
    return max(0.0, timeout - (time.monotonic() - arrived))


def expired(timeout: float | None, arrived: float) -> RunResult:
    """The result of an execution whose timeout ran out before it could start (it waited for
    the kernel, or behind another execution of its WebSocket)."""
    return RunResult(
        stdout="",
        stderr=(
            f"\nExecution timed out after {timeout:g}s while waiting for the previous execution"
            " to finish; it did not run\n"
        ),
        exit_code=124,
        execution_time=0.0,
        timed_out=True,
        extra={"queued": round(time.monotonic() - arrived, 6)},
    )


def make_victim(pid: int) -> None:
    """Make `pid` (and what it forks later) the OOM killer's choice before agentd."""
    path = f"/proc/{pid}/oom_score_adj"
    try:
        with open(path, "w") as f:
            f.write(CHILD_OOM_SCORE_ADJ)
    except PermissionError:
        # not exec'd yet, so still not dumpable: its /proc entries belong to agentd's own uid
        with contextlib.suppress(OSError), identity.own_files(), open(path, "w") as f:
            f.write(CHILD_OOM_SCORE_ADJ)
    except OSError:
        pass


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal the process group (session) a child leads; it was started in its own session."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _exited(pid: int) -> None:
    """Wait for `pid` to exit without waiting for its output pipes to close."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        while True:  # no pidfd (old kernel): poll
            try:
                os.kill(pid, 0)
                with open(f"/proc/{pid}/stat") as f:  # noqa: ASYNC230
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        return
            except (ProcessLookupError, FileNotFoundError):
                return
            await asyncio.sleep(0.005)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def _readable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, _readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)


class _Capture:
    def __init__(self, name: str, sink: OutputSink | None) -> None:
        self.name = name
        self.sink = sink
        self.parts: list[str] = []
        self.size = 0
        self.truncated = False

    def feed(self, data: bytes) -> None:
        """Keep (and stream) up to MAX_CAPTURE bytes; the rest is dropped, and the stream (a
        WebSocket's queue) gets the marker once: live output is bounded like the answer."""
        if self.size >= MAX_CAPTURE:
            if not self.truncated and self.sink is not None:
                self.sink(self.name, TRUNCATED)
            self.truncated = True
            return
        text = data.decode(errors="replace")
        if self.sink is not None:
            self.sink(self.name, text)
        self.parts.append(text)
        self.size += len(data)

    def text(self) -> str:
        out = "".join(self.parts)
        return out + (TRUNCATED if self.truncated else "")


async def _pump(stream: asyncio.StreamReader | None, cap: _Capture) -> None:
    if stream is None:
        return
    while chunk := await stream.read(65536):
        cap.feed(chunk)


async def run_process(
    argv: list[str],
    *,
    cwd: str,
    env: dict[str, str],
    timeout: float | None,  # noqa: ASYNC109
    sink: OutputSink | None = None,
    on_start: Callable[[int], None] | None = None,
    arrived: float | None = None,
) -> RunResult:
    """Run argv to completion (or until `timeout`, counted from `arrived` when given, then
    kill its whole group). Cancelling the call kills the group too."""
    start = time.perf_counter()
    limit = remaining(timeout, arrived)
    argv, as_user = identity.spawn(argv)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        **as_user,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    make_victim(proc.pid)
    if on_start is not None:
        on_start(proc.pid)
    out, err = _Capture("stdout", sink), _Capture("stderr", sink)
    pumps = asyncio.gather(_pump(proc.stdout, out), _pump(proc.stderr, err))
    timed_out = False
    try:
        await asyncio.wait_for(_exited(proc.pid), limit)
    except TimeoutError:
        timed_out = True
    except asyncio.CancelledError:
        kill_group(proc.pid)
        raise
    finally:
        # the run is over when its main process is: what it left in its group ends with it
        # (and so stops holding our pipes open)
        kill_group(proc.pid)
    try:
        code = exit_code(await asyncio.wait_for(proc.wait(), 2.0))
    except TimeoutError:  # a descendant escaped into its own session, pipes still open
        code = exit_code(proc.returncode if proc.returncode is not None else -signal.SIGKILL)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(pumps, 0.5)
    if timed_out:
        err.feed(f"\nExecution timed out after {timeout:g}s and was killed\n".encode())
    return RunResult(
        stdout=out.text(),
        stderr=err.text(),
        exit_code=124 if timed_out else code,
        execution_time=time.perf_counter() - start,
        timed_out=timed_out,
        pid=proc.pid,
    )


@dataclass
class BackgroundProcess:
    process_id: str
    execution_id: str
    name: str
    kind: str  # "execute" or "command"
    language: str | None
    command: str
    started_at: float = field(default_factory=time.time)
    status: str = "running"
    pid: int = 0
    exit_code: int | None = None
    ended_at: float | None = None
    stdout: str = ""
    stderr: str = ""
    task: asyncio.Task[None] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "process_id": self.process_id,
            "execution_id": self.execution_id,
            "name": self.name,
            "type": self.kind,
            "language": self.language,
            "command": self.command,
            "status": self.status,
            "pid": self.pid,
            "exit_code": self.exit_code,
            "start_time": self.started_at,
            "end_time": self.ended_at,
            "stdout": self.stdout,
            "stderr": self.stderr,
        }


class ProcessRegistry:
    """Background executions and commands, listable and killable by process_id."""

    def __init__(self, keep: int = 200) -> None:
        self.procs: dict[str, BackgroundProcess] = {}
        self.keep = keep

    def start(
        self,
        argv: list[str],
        *,
        kind: str,
        name: str | None,
        language: str | None,
        command: str,
        cwd: str,
        env: dict[str, str],
        timeout: float | None,
        cleanup: Callable[[], None] | None = None,
        explain: Callable[[RunResult], RunResult] | None = None,
    ) -> BackgroundProcess:
        """Start argv in the background; `explain` may add to its result (why it was
        stopped) before it is recorded."""
        pid_hex = uuid.uuid4().hex[:12]
        bp = BackgroundProcess(
            process_id=f"proc_{pid_hex}",
            execution_id=f"exec_{pid_hex}",
            name=name or f"{kind}-{pid_hex[:6]}",
            kind=kind,
            language=language,
            command=command,
        )

        def _started(pid: int) -> None:
            bp.pid = pid

        async def _run() -> None:
            try:
                res = await run_process(argv, cwd=cwd, env=env, timeout=timeout, on_start=_started)
                if explain is not None:
                    res = explain(res)
                bp.stdout, bp.stderr, bp.exit_code = res.stdout, res.stderr, res.exit_code
                if bp.status != "killed":
                    bp.status = (
                        "timeout"
                        if res.timed_out
                        else ("completed" if res.exit_code == 0 else "failed")
                    )
            except OSError as exc:
                bp.status, bp.stderr, bp.exit_code = "failed", str(exc), 127
            finally:
                bp.ended_at = time.time()
                if cleanup is not None:
                    cleanup()

        bp.task = asyncio.get_running_loop().create_task(_run())
        self.procs[bp.process_id] = bp
        self._trim()
        return bp

    def _trim(self) -> None:
        done = [p for p in self.procs.values() if p.status != "running"]
        for p in done[: max(0, len(self.procs) - self.keep)]:
            self.procs.pop(p.process_id, None)

    def find(self, ident: str) -> BackgroundProcess | None:
        if ident in self.procs:
            return self.procs[ident]
        for p in self.procs.values():
            if ident in (p.execution_id, str(p.pid)):
                return p
        return None

    def kill(self, bp: BackgroundProcess) -> None:
        if bp.status == "running":
            bp.status = "killed"
            if bp.pid:
                kill_group(bp.pid)
