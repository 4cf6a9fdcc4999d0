"""bash and python over the in-memory sandbox (HTTP) and over a scripted WebSocket."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from agentplex.agent.tools import MAX_OUTPUT_CHARS, SandboxTools
from agentplex.core.ports import DataPlaneSocket
from agentplex.sandbox.memory import MemoryBackend, MemorySandbox
from tests.unit.agent.tools.conftest import Session


def _shell(stdout: str = "", stderr: str = "", exit_code: int = 0) -> Any:
    def runner(_s: MemorySandbox, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"stdout": stdout, "stderr": stderr, "exit_code": exit_code}

    return runner


async def test_bash_runs_in_workspace_with_stderr_folded_in(session: Session) -> None:
    session.backend.runner = _shell("hello-from-tool\n")
    result = await session.call("bash", {"command": "echo hello-from-tool"})
    assert result.error is None
    assert result.output == "hello-from-tool\n"
    assert result.title == "echo hello-from-tool"
    assert result.metadata == {"output": "hello-from-tool\n", "exit": 0, "truncated": False}


async def test_bash_sends_command_workdir_and_timeout(session: Session) -> None:
    await session.call(
        "bash", {"command": "ls", "workdir": "src", "timeout": 5000, "description": "list"}
    )
    kind, body = session.bodies[-1]
    assert kind == "command"
    assert body["command"] == "bash"
    assert body["args"] == ["-c", "exec 2>&1\nls"]
    assert body["workdir"] == "/workspace/src"
    assert body["timeout"] == 5.0


async def test_bash_timeout_is_capped_by_the_context(session: Session) -> None:
    session.timeout = 2.0
    await session.call("bash", {"command": "ls", "timeout": 600_000})
    assert session.bodies[-1][1]["timeout"] == 2.0
    await session.call("bash", {"command": "ls"})
    assert session.bodies[-1][1]["timeout"] == 2.0


async def test_nonzero_exit_is_output_not_error(session: Session) -> None:
    session.backend.runner = _shell("no such file\n", exit_code=2)
    result = await session.call("bash", {"command": "ls nope"})
    assert result.error is None
    assert result.output == "no such file\n(exit code 2)"
    assert result.metadata["exit"] == 2
    assert result.metadata["output"] == "no such file\n"


async def test_huge_output_is_truncated_with_a_note(session: Session) -> None:
    session.backend.runner = _shell("HEAD" + "x" * 300_000 + "TAIL")
    result = await session.call("bash", {"command": "cat big"})
    assert result.error is None
    assert result.metadata["truncated"] is True
    assert len(result.output) < MAX_OUTPUT_CHARS + 200
    assert result.output.startswith("HEAD") and result.output.endswith("TAIL")
    assert "[output truncated:" in result.output


async def test_python_output_result_and_rich_summary(session: Session) -> None:
    answer = {
        "stdout": "hi\n",
        "result": "42",
        "png": "iVBORw0KGgo" * 200,
        "rich_outputs": [{"type": "image/png", "data": {"image/png": "iVBORw0KGgo" * 200}}],
        "exit_code": 0,
    }
    session.backend.runner = lambda _s, _k, _b: answer
    result = await session.call("python", {"code": "print('hi'); 42"})
    assert result.error is None
    assert result.output.startswith("hi\n42\n[image/png output: ")
    assert "iVBOR" not in result.output  # summarized, not dumped
    assert session.sandbox.calls[-1] == ("POST", "/execute")


async def test_python_exception_is_an_error_with_its_traceback(session: Session) -> None:
    traceback = "Traceback (most recent call last):\nZeroDivisionError: division by zero\n"
    answer = {
        "stdout": "before\n",
        "stderr": traceback,
        "exit_code": 1,
        "error": {"ename": "ZeroDivisionError", "evalue": "division by zero"},
    }
    session.backend.runner = lambda _s, _k, _b: answer
    result = await session.call("python", {"code": "print('before'); 1/0"})
    assert result.error == "before\n" + traceback
    assert result.output == "before\n" + traceback


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("bash", {}, "'command' is required"),
        ("bash", {"command": 3}, "'command' must be a string, got a number"),
        ("bash", {"command": ""}, "'command' must not be empty"),
        ("bash", {"command": "ls", "timeout": "10"}, "'timeout' must be a whole number"),
        ("bash", {"command": "ls", "timeout": -1}, "'timeout' must be at least 1"),
        ("bash", {"command": "ls", "workdir": ["x"]}, "'workdir' must be a string"),
        ("bash", "ls", "takes a JSON object of arguments"),
        ("python", {"source": "1"}, "'code' is required"),
        ("read", {"path": "a"}, "'filePath' is required"),
        ("read", {"filePath": "a", "offset": 1.5}, "'offset' must be a whole number"),
        ("read", {"filePath": "a", "limit": 0}, "'limit' must be at least 1"),
        ("write", {"filePath": "a"}, "'content' is required"),
        ("write", {"filePath": "a", "content": {"x": 1}}, "'content' must be a string"),
        ("edit", {"filePath": "a", "oldString": "x"}, "'newString' is required"),
        (
            "edit",
            {"filePath": "a", "oldString": "x", "newString": "y", "replaceAll": "yes"},
            "'replaceAll' must be true or false",
        ),
        ("list", {"path": 7}, "'path' must be a string"),
        ("glob", {}, "'pattern' is required"),
    ],
)
async def test_bad_arguments_are_tool_errors(
    session: Session, name: str, arguments: Any, message: str
) -> None:
    result = await session.call(name, arguments)
    assert result.error is not None
    assert message in result.error
    assert f"the {name} tool" in result.error.lower()
    assert session.sandbox_requests == 0  # no sandbox is made for a call that cannot run


async def test_unknown_tool_and_unavailable_sandbox_are_tool_errors(session: Session) -> None:
    result = await session.call("webfetch", {"url": "x"})
    assert result.error is not None and "Unknown tool 'webfetch'" in result.error
    session.backend.fail_next_create = "no room for sandboxes"

    async def failing() -> str:
        await session.backend.create(
            "x", session.backend.builtin_templates()[0], env_vars={}, internet_access=False
        )
        return "x"

    ctx = dataclasses.replace(session.ctx(), sandbox=failing)
    failed = await session.tools.call(ctx, "bash", {"command": "ls"})
    assert failed.error == "The sandbox could not do this: no room for sandboxes"


def test_specs_and_patterns() -> None:
    tools = SandboxTools(MemoryBackend())
    names = [s.name for s in tools.specs()]
    assert names == ["bash", "python", "read", "write", "edit", "list", "glob"]
    for spec in tools.specs():
        assert spec.parameters["type"] == "object"
        assert set(spec.parameters["required"]) <= set(spec.parameters["properties"])
    read = next(s for s in tools.specs() if s.name == "read")
    assert set(read.parameters["properties"]) == {"filePath", "offset", "limit"}
    assert tools.pattern("bash", {"command": "echo hi"}) == "echo hi"
    assert tools.pattern("read", {"filePath": "a/../b.txt"}) == "/workspace/b.txt"
    assert tools.pattern("edit", {"filePath": "/tmp/x"}) == "/tmp/x"
    assert tools.pattern("list", {}) == "/workspace"
    assert tools.pattern("bash", {"command": 5}) == "*"
    only = SandboxTools(MemoryBackend(), tools=["read", "list"])
    assert [s.name for s in only.specs()] == ["read", "list"]
    with pytest.raises(ValueError, match="unknown sandbox tools"):
        SandboxTools(MemoryBackend(), tools=["rm"])


# -- the streaming path ------------------------------------------------------------------------


class ScriptedSocket:
    """Answers one execute message with scripted frames (a delay before each)."""

    def __init__(self, frames: list[tuple[float, dict[str, Any]]]) -> None:
        self.frames = frames
        self.sent: list[dict[str, Any]] = []
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.closed = False
        self._feeder: asyncio.Task[None] | None = None

    async def send(self, message: str | bytes) -> None:
        self.sent.append(json.loads(message))
        self._feeder = asyncio.create_task(self._feed())

    async def _feed(self) -> None:
        for delay, frame in self.frames:
            await asyncio.sleep(delay)
            self.queue.put_nowait(json.dumps(frame))

    async def recv(self) -> str:
        return await self.queue.get()

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        raise NotImplementedError

    def close(self) -> None:
        self.closed = True
        if self._feeder is not None:
            self._feeder.cancel()


class StreamingBackend(MemoryBackend):
    def __init__(self, socket: ScriptedSocket) -> None:
        super().__init__()
        self.socket = socket

    @asynccontextmanager
    async def _ws(self) -> AsyncIterator[DataPlaneSocket]:
        try:
            yield self.socket
        finally:
            self.socket.close()

    def websocket(self, sandbox_id: str, path: str, *, headers: Any = None) -> Any:
        assert path == "/execute/stream"
        return self._ws()


def _streaming(frames: list[tuple[float, dict[str, Any]]]) -> tuple[Session, ScriptedSocket]:
    socket = ScriptedSocket(frames)
    backend = StreamingBackend(socket)
    return Session(backend, SandboxTools(backend)), socket


async def test_bash_streams_progress_and_result() -> None:
    session, socket = _streaming(
        [
            (0.0, {"type": "stdout", "data": "one\n"}),
            (0.3, {"type": "stdout", "data": "two\n"}),
            (0.3, {"type": "stdout", "data": "three\n"}),
            (0.0, {"type": "result", "exit_code": 0, "timed_out": False}),
            (0.0, {"type": "complete", "success": True}),
        ]
    )
    result = await session.call("bash", {"command": "for w in one two three; do echo $w; done"})
    assert result.output == "one\ntwo\nthree\n"
    assert socket.sent[0]["language"] == "bash"
    assert socket.sent[0]["code"].startswith("exec 2>&1\n")
    assert socket.sent[0]["workdir"] == "/workspace"
    assert session.progress[:2] == ["one\n", "one\ntwo\n"]
    assert socket.closed


async def test_bash_stream_timeout_and_agent_errors() -> None:
    session, _ = _streaming(
        [
            (0.0, {"type": "stdout", "data": "started\n"}),
            (0.0, {"type": "result", "exit_code": 137, "timed_out": True}),
            (0.0, {"type": "error", "code": "EXECUTION_TIMEOUT", "error": "timed out"}),
            (0.0, {"type": "complete", "success": False}),
        ]
    )
    result = await session.call("bash", {"command": "sleep 99", "timeout": 1000})
    assert result.error == "started\n\n\nCommand timed out after 1 s and was stopped."
    assert result.output == "started\n"

    session, _ = _streaming(
        [
            (0.0, {"type": "error", "code": "INVALID_WORKDIR", "message": "workdir /x missing"}),
            (0.0, {"type": "complete", "success": False}),
        ]
    )
    bad = await session.call("bash", {"command": "ls", "workdir": "/x"})
    assert bad.error == "workdir /x missing"


async def test_cancelling_bash_closes_the_stream() -> None:
    session, socket = _streaming([(0.0, {"type": "stdout", "data": "sleeping\n"}), (30.0, {})])
    task = asyncio.create_task(session.call("bash", {"command": "sleep 30"}))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert socket.closed  # agentd kills the command when its socket closes
