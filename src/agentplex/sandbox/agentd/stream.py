"""WebSocket routes: /execute/stream (live output) and /terminal (a real PTY running bash)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import signal
import struct
import termios
import time
from typing import Any

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from agentplex.sandbox.agentd import identity
from agentplex.sandbox.agentd.agent import Agent, parse_env, parse_timeout
from agentplex.sandbox.agentd.disconnect import run_while
from agentplex.sandbox.agentd.errors import AgentError
from agentplex.sandbox.agentd.processes import (
    OutputSink,
    RunResult,
    exit_code,
    kill_group,
    make_victim,
)


def _agent(ws: WebSocket) -> Agent:
    agent: Agent = ws.app.state.agent
    return agent


async def _outcome(
    agent: Agent, msg: dict[str, Any], arrived: float, sink: OutputSink
) -> tuple[RunResult, float] | AgentError:
    """Run one execute message: its result and timeout, or the error to report."""
    try:
        timeout = parse_timeout(msg.get("timeout"))
        res = await agent.execute(
            agent.language(msg.get("language")),
            str(msg.get("code", "")),
            workdir=agent.requested_workdir(msg.get("workdir") or msg.get("working_dir")),
            env=parse_env(msg.get("env")),
            timeout=timeout,
            sink=sink,
            arrived=arrived,
        )
    except AgentError as exc:
        return exc
    return res, timeout


def _error_frame(exc: AgentError) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "error",
        "code": exc.code,
        "error": exc.message,
        "message": exc.message,
    }
    if exc.details:
        frame["details"] = exc.details
    return frame


async def _run_one(ws: WebSocket, agent: Agent, msg: dict[str, Any], arrived: float) -> None:
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def sink(name: str, text: str) -> None:
        queue.put_nowait({"type": name, "data": text, "timestamp": time.time()})

    async def sender() -> None:
        while (item := await queue.get()) is not None:
            await ws.send_json(item)

    task = asyncio.create_task(sender())
    try:
        outcome = await _outcome(agent, msg, arrived, sink)
    except BaseException:
        task.cancel()  # the client went away: nothing more to send
        raise
    queue.put_nowait(None)
    await task
    if isinstance(outcome, AgentError):
        await ws.send_json(_error_frame(outcome))
        await ws.send_json({"type": "complete", "success": False})
        return
    res, timeout = outcome
    result: dict[str, Any] = {
        "type": "result",
        "exit_code": res.exit_code,
        "execution_time": round(res.execution_time, 6),
        "timed_out": res.timed_out,
    }
    result.update({k: v for k, v in res.extra.items() if k != "type"})
    await ws.send_json(result)
    if res.timed_out:
        await ws.send_json(
            {
                "type": "error",
                "code": "EXECUTION_TIMEOUT",
                "error": f"execution timed out after {timeout:g}s",
            }
        )
    await ws.send_json({"type": "complete", "success": res.exit_code == 0 and not res.timed_out})


async def _read_frames(
    ws: WebSocket, inbox: asyncio.Queue[tuple[str, float] | None], gone: asyncio.Event
) -> None:
    """Queue every frame the client sends, with its arrival time; None (and `gone` set) once
    it has gone.

    Read all along, not only between executions, so that a client dropping the connection
    mid-cell is seen at once (and its cell stopped)."""
    try:
        while (msg := await ws.receive())["type"] != "websocket.disconnect":
            text = msg.get("text")
            if text is None:
                text = (msg.get("bytes") or b"").decode(errors="replace")
            inbox.put_nowait((text, time.monotonic()))
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        gone.set()
        inbox.put_nowait(None)


def _parse(raw: str) -> dict[str, Any] | None:
    try:
        msg = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nesting too deep to parse
        return None
    if not isinstance(msg, dict) or msg.get("type", "execute") != "execute":
        return None
    if not isinstance(msg.get("code"), str):  # as /execute: no code is an error, not a no-op
        return None
    return msg


async def execute_stream(ws: WebSocket) -> None:
    await ws.accept()
    agent = _agent(ws)
    inbox: asyncio.Queue[tuple[str, float] | None] = asyncio.Queue()
    gone = asyncio.Event()
    reader = asyncio.create_task(_read_frames(ws, inbox, gone))
    try:
        while (item := await inbox.get()) is not None:
            raw, arrived = item
            msg = _parse(raw)
            if msg is None:
                await ws.send_json(
                    {
                        "type": "error",
                        "code": "INVALID_REQUEST",
                        "error": 'expected {"type": "execute", "code": ...}',
                    }
                )
                continue
            await run_while(_run_one(ws, agent, msg, arrived), gone.wait())
    except (WebSocketDisconnect, RuntimeError, AgentError):  # the client went away
        return
    finally:
        reader.cancel()


MAX_TERMINAL_SIZE = 10_000  # columns or rows; a window size is an unsigned short


def _terminal_size(msg: dict[str, Any]) -> tuple[int, int]:
    """(cols, rows) of a resize message; AgentError unless both are integers in 1..10000
    (a negative or huge size would not fit the ioctl and used to end the terminal)."""
    out = []
    for key in ("cols", "rows"):
        value = msg.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise AgentError("INVALID_REQUEST", f"resize: '{key}' must be a number", 400)
        if not 1 <= value <= MAX_TERMINAL_SIZE:
            raise AgentError(
                "INVALID_REQUEST", f"resize: '{key}' must be 1..{MAX_TERMINAL_SIZE}", 400
            )
        out.append(int(value))
    return out[0], out[1]


def _set_size(fd: int, cols: int, rows: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


async def _wait_exit(pid: int) -> int:
    """Reap the shell without a thread (agentd stays single-threaded, so it can fork safely)."""
    for _ in range(500):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222
        except ChildProcessError:
            return -1
        if done:
            return exit_code(os.waitstatus_to_exitcode(status))
        await asyncio.sleep(0.01)
    return -1


async def terminal(ws: WebSocket) -> None:
    await ws.accept()
    agent = _agent(ws)
    shell = shutil.which("bash") or "/bin/sh"
    env = agent.base_env()
    cwd = agent.cfg.workspace_real
    pid, master = os.forkpty()
    if pid == 0:  # the shell
        try:
            identity.become_user()
            os.chdir(cwd)
            os.execve(shell, [shell, "-i"], env)  # noqa: S606
        finally:
            os._exit(127)
    make_victim(pid)
    _set_size(master, 80, 24)
    os.set_blocking(master, False)
    loop = asyncio.get_running_loop()
    out: asyncio.Queue[bytes | None] = asyncio.Queue()

    def _readable() -> None:
        try:
            data = os.read(master, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: the shell and everything on the pty is gone
            data = b""
        if not data:
            loop.remove_reader(master)
        out.put_nowait(data or None)

    loop.add_reader(master, _readable)

    async def pump_out() -> None:
        while (data := await out.get()) is not None:
            await ws.send_json({"type": "output", "data": data.decode(errors="replace")})
        code = await _wait_exit(pid)
        with contextlib.suppress(Exception):
            await ws.send_json({"type": "exit", "code": code})
            await ws.close()

    sender = asyncio.create_task(pump_out())
    try:
        while not sender.done():
            receive = asyncio.create_task(ws.receive_text())
            await asyncio.wait({receive, sender}, return_when=asyncio.FIRST_COMPLETED)
            if not receive.done():
                receive.cancel()
                break
            try:
                msg = json.loads(receive.result())
                if not isinstance(msg, dict):
                    raise AgentError("INVALID_REQUEST", "expected a JSON object", 400)
                if msg.get("type") == "input":
                    os.write(master, str(msg.get("data", "")).encode())
                elif msg.get("type") == "resize":
                    _set_size(master, *_terminal_size(msg))
            except (ValueError, RecursionError):  # not JSON: said, and the terminal stays
                await ws.send_json(_error_frame(AgentError("INVALID_REQUEST", "not JSON", 400)))
            except AgentError as exc:
                await ws.send_json(_error_frame(exc))
    except (WebSocketDisconnect, RuntimeError, KeyError):
        pass
    finally:
        kill_group(pid, signal.SIGHUP)
        kill_group(pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sender, 2.0)
        loop.remove_reader(master)
        os.close(master)


routes = [
    WebSocketRoute("/execute/stream", execute_stream),
    WebSocketRoute("/terminal", terminal),
]
