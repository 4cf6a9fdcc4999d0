"""The code tools: ``bash`` (a command, streamed) and ``python`` (the sandbox's kernel).

``bash`` runs over agentd's ``/execute/stream`` WebSocket (language ``bash``), so its output
reaches `ToolContext.progress` while it runs; stderr is folded into stdout inside the shell
(``exec 2>&1``) so the two come back in the order they were written. A backend without
WebSockets (the in-memory one) gets ``/commands/run`` instead, without progress. Cancelling
the call closes the WebSocket (or the HTTP request); agentd then kills the command's process
group, or interrupts the Python cell (its variables survive).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agentplex.agent.tools.arguments import Arguments
from agentplex.agent.tools.dataplane import WORKSPACE, DataPlaneError, call, resolve
from agentplex.agent.tools.output import OutputBuffer, cap
from agentplex.core.ports import DataPlaneSocket, SandboxBackend, ToolContext, ToolResult
from agentplex.errors import SandboxUnavailable

PROGRESS_INTERVAL = 0.2
"""Seconds between two `ToolContext.progress` calls of a running command (at most)."""
GRACE = 10.0
"""Seconds the server waits past a call's own timeout for agentd's answer (agentd enforces the
timeout itself and answers at once)."""


@dataclass
class _Run:
    """How a command ended: ``exit_code`` (None if it never ran), ``timed_out``, ``problem``
    (agentd refused or failed it)."""

    exit_code: int | None = None
    timed_out: bool = False
    problem: str | None = None


def _limit(args: Arguments, ctx: ToolContext) -> float:
    """The call's timeout in seconds: the model's ``timeout`` (milliseconds), at most
    ``ctx.timeout``."""
    millis = args.optional_int("timeout", minimum=1)
    if millis is None:
        return ctx.timeout
    return min(millis / 1000.0, ctx.timeout)


class _Progress:
    """Publishes output so far at most every `PROGRESS_INTERVAL` seconds."""

    def __init__(self, publish: Callable[[str], Awaitable[None]], out: OutputBuffer) -> None:
        self.publish = publish
        self.out = out
        self.last = 0.0
        self.pending = False

    def wait(self) -> float | None:
        """Seconds until pending output is due (None: nothing pending)."""
        if not self.pending:
            return None
        return max(0.0, self.last + PROGRESS_INTERVAL - time.monotonic())

    async def changed(self) -> None:
        self.pending = True
        if time.monotonic() - self.last >= PROGRESS_INTERVAL:
            await self.flush()

    async def flush(self) -> None:
        self.pending = False
        self.last = time.monotonic()
        await self.publish(self.out.text())


async def _frames(ws: DataPlaneSocket, progress: _Progress) -> Any:
    """The next JSON frame, publishing due progress while waiting."""
    while True:
        wait = progress.wait()
        if wait is None:
            raw = await ws.recv()
        else:
            try:
                raw = await asyncio.wait_for(ws.recv(), wait)
            except TimeoutError:
                await progress.flush()
                continue
        return json.loads(raw)


async def _bash_stream(
    backend: SandboxBackend,
    sandbox_id: str,
    script: str,
    workdir: str,
    limit: float,
    out: OutputBuffer,
    ctx: ToolContext,
) -> _Run | None:
    """Run ``script`` over /execute/stream; None if the backend has no WebSockets."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            ws = await stack.enter_async_context(backend.websocket(sandbox_id, "/execute/stream"))
        except SandboxUnavailable:
            return None
        request = {"type": "execute", "language": "bash", "code": script, "workdir": workdir}
        await ws.send(json.dumps({**request, "timeout": limit}))
        progress = _Progress(ctx.progress, out)
        run = _Run()
        while True:
            frame = await _frames(ws, progress)
            kind = frame.get("type") if isinstance(frame, dict) else None
            if kind in ("stdout", "stderr"):
                out.append(str(frame.get("data", "")))
                await progress.changed()
            elif kind == "result":
                run.exit_code = int(frame.get("exit_code", -1))
                run.timed_out = bool(frame.get("timed_out"))
            elif kind == "error" and frame.get("code") != "EXECUTION_TIMEOUT":
                run.problem = str(frame.get("message") or frame.get("error") or frame)
            elif kind == "complete":
                return run
    raise AssertionError("unreachable")  # pragma: no cover


async def _bash_http(
    backend: SandboxBackend,
    sandbox_id: str,
    script: str,
    workdir: str,
    limit: float,
    out: OutputBuffer,
) -> _Run:
    """Run ``script`` through POST /commands/run (no progress)."""
    body = {"command": "bash", "args": ["-c", script], "workdir": workdir, "timeout": limit}
    try:
        answer = await call(
            backend, sandbox_id, "POST", "/commands/run", json_body=body, timeout=limit + GRACE
        )
    except DataPlaneError as exc:
        if exc.code != "EXECUTION_TIMEOUT":
            return _Run(problem=exc.message)
        answer, timed_out = exc.details if isinstance(exc.details, dict) else {}, True
    else:
        timed_out = False
    out.append(str(answer.get("stdout") or ""))
    out.append(str(answer.get("stderr") or ""))
    return _Run(exit_code=int(answer.get("exit_code", -1)), timed_out=timed_out)


async def bash(
    backend: SandboxBackend, ctx: ToolContext, arguments: Mapping[str, Any]
) -> ToolResult:
    """Run a command with bash in the sandbox; combined output, exit code in metadata."""
    args = Arguments("bash", arguments)
    command = args.string("command")
    limit = _limit(args, ctx)
    requested = args.optional_string("workdir")
    args.optional_string("description")  # shown by clients; checked only
    workdir = resolve(requested) if requested else WORKSPACE
    sandbox_id = await ctx.sandbox()
    out = OutputBuffer()
    script = "exec 2>&1\n" + command
    try:
        async with asyncio.timeout(limit + GRACE):
            run = await _bash_stream(backend, sandbox_id, script, workdir, limit, out, ctx)
            if run is None:
                run = await _bash_http(backend, sandbox_id, script, workdir, limit, out)
    except TimeoutError:
        run = _Run(timed_out=True)
    text = out.text()
    if run.problem is not None:
        return ToolResult(error=run.problem, title=command)
    metadata = {"output": text, "exit": run.exit_code, "truncated": out.truncated}
    if run.timed_out:
        note = f"Command timed out after {limit:g} s and was stopped."
        error = f"{text}\n\n{note}" if text else note
        return ToolResult(output=text, title=command, metadata=metadata, error=error)
    output = text
    if run.exit_code:
        separator = "\n" if text and not text.endswith("\n") else ""
        output = f"{text}{separator}(exit code {run.exit_code})"
    return ToolResult(output=output, title=command, metadata=metadata)


def _size(value: Any) -> str:
    """The size of a base64 image as text (``12.3 KiB``)."""
    try:
        size = len(base64.b64decode(str(value), validate=False))
    except (binascii.Error, ValueError):
        size = len(str(value))
    return f"{size / 1024:.1f} KiB" if size >= 1024 else f"{size} B"


def _rich_notes(answer: Mapping[str, Any]) -> list[str]:
    """One line per rich output of a cell (figures, HTML, ...), never the data itself."""
    notes: list[str] = []
    has_text = answer.get("result") is not None
    outputs = answer.get("rich_outputs")
    if not isinstance(outputs, list):
        outputs = [
            {"type": mime, "data": {mime: answer[key]}}
            for key, mime in (("png", "image/png"), ("svg", "image/svg+xml"), ("html", "text/html"))
            if answer.get(key)
        ]
    for item in outputs:
        if not isinstance(item, dict):
            continue
        mime = str(item.get("type", ""))
        data = item.get("data")
        value = data.get(mime) if isinstance(data, dict) else None
        if mime == "image/png":
            notes.append(f"[image/png output: {_size(value)}, not shown]")
        elif mime == "image/svg+xml":
            notes.append(f"[image/svg+xml output: {len(str(value))} characters, not shown]")
        elif has_text:
            continue  # the value's text form is already there
        elif mime == "text/markdown":
            notes.append(str(value))
        elif mime == "text/html":
            notes.append(f"[text/html output: {len(str(value))} characters, not shown]")
    return notes


async def python(
    backend: SandboxBackend, ctx: ToolContext, arguments: Mapping[str, Any]
) -> ToolResult:
    """Run code in the sandbox's stateful Python kernel."""
    args = Arguments("python", arguments)
    code = args.string("code")
    limit = _limit(args, ctx)
    sandbox_id = await ctx.sandbox()
    timed_out = False
    body = {"code": code, "language": "python", "timeout": limit}
    try:
        async with asyncio.timeout(limit + GRACE):
            answer = await call(
                backend, sandbox_id, "POST", "/execute", json_body=body, timeout=limit + GRACE
            )
    except TimeoutError:
        answer, timed_out = {}, True
    except DataPlaneError as exc:
        if exc.code != "EXECUTION_TIMEOUT":
            return ToolResult(error=exc.message, title="python")
        answer, timed_out = exc.details if isinstance(exc.details, dict) else {}, True
    pieces = [str(answer.get(k) or "") for k in ("stdout", "stderr")]
    if answer.get("result") is not None:
        pieces.append(str(answer["result"]) + "\n")
    pieces.extend(note + "\n" for note in _rich_notes(answer))
    text = "".join(p if not p or p.endswith("\n") else p + "\n" for p in pieces)
    failed = answer.get("error")
    if isinstance(failed, dict) and not answer.get("stderr"):
        text += f"{failed.get('ename', 'Error')}: {failed.get('evalue', '')}\n"
    text, truncated = cap(text)
    exit_code = answer.get("exit_code")
    metadata = {"output": text, "exit": exit_code, "truncated": truncated}
    if timed_out:
        note = f"Python code timed out after {limit:g} s and was interrupted."
        return ToolResult(output=text, title="python", metadata=metadata, error=f"{text}\n{note}")
    if failed or exit_code:
        return ToolResult(output=text, title="python", metadata=metadata, error=text or "failed")
    return ToolResult(output=text, title="python", metadata=metadata)
