"""The agent's sandbox tools against real bubblewrap sandboxes: what the model gets back."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from agentplex.agent.tools import SandboxTools
from agentplex.core.ports import ToolContext, ToolResult
from agentplex.sandbox import SandboxManager
from tests.sandbox.conftest import create

pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Agent:
    """The tools as one session's agent calls them."""

    tools: SandboxTools
    sandbox_id: str
    timeout: float = 60.0
    progress: list[str] = field(default_factory=list)

    async def _sandbox(self) -> str:
        return self.sandbox_id

    async def _progress(self, text: str) -> None:
        self.progress.append(text)

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        ctx = ToolContext(
            env_id="env",
            session_id="ses_x",
            message_id="msg_x",
            call_id="call_x",
            sandbox=self._sandbox,
            progress=self._progress,
            timeout=self.timeout,
        )
        return await self.tools.call(ctx, name, arguments)


async def _agent(manager: SandboxManager, template: str = "python") -> Agent:
    handle = await create(manager, template)
    return Agent(SandboxTools(manager), handle.id)


async def test_bash_output_exit_code_and_order(manager: SandboxManager) -> None:
    agent = await _agent(manager, "bash")
    result = await agent.call("bash", {"command": "pwd; echo out; echo err >&2; echo out2"})
    assert result.error is None
    assert result.output == "/workspace\nout\nerr\nout2\n"
    assert result.metadata == {"output": result.output, "exit": 0, "truncated": False}
    assert result.title == "pwd; echo out; echo err >&2; echo out2"

    failed = await agent.call("bash", {"command": "echo nope; exit 3"})
    assert failed.error is None
    assert failed.output == "nope\n(exit code 3)"
    assert failed.metadata["exit"] == 3

    await agent.call("bash", {"command": "mkdir -p sub/dir"})
    where = await agent.call("bash", {"command": "pwd", "workdir": "sub/dir"})
    assert where.output == "/workspace/sub/dir\n"
    missing = await agent.call("bash", {"command": "pwd", "workdir": "nowhere"})
    assert missing.error is not None and "/workspace/nowhere" in missing.error


async def test_bash_streams_progress_and_truncates(manager: SandboxManager) -> None:
    agent = await _agent(manager, "bash")
    result = await agent.call(
        "bash", {"command": "echo first; sleep 0.6; echo second; sleep 0.6; echo third"}
    )
    assert result.output == "first\nsecond\nthird\n"
    assert agent.progress[:2] == ["first\n", "first\nsecond\n"]

    big = await agent.call("bash", {"command": "seq 1 200000"})
    assert big.metadata["truncated"] is True
    assert big.output.startswith("1\n2\n3\n") and big.output.endswith("199999\n200000\n")
    assert "[output truncated:" in big.output
    assert len(big.output) < 52_000


async def test_bash_timeout_is_an_error(manager: SandboxManager) -> None:
    agent = await _agent(manager, "bash")
    started = time.monotonic()
    result = await agent.call("bash", {"command": "echo start; sleep 20", "timeout": 1000})
    assert time.monotonic() - started < 5
    assert result.error is not None
    assert result.error.startswith("start\n")
    assert "timed out after 1 s" in result.error


async def _sleepers(agent: Agent, marker: str) -> list[str]:
    check = await agent.call(
        "bash", {"command": f"ps -eo pid,args | grep -F '{marker}' | grep -v grep || true"}
    )
    return [line for line in check.output.splitlines() if line.strip()]


async def test_cancelling_bash_kills_the_command(manager: SandboxManager) -> None:
    agent = await _agent(manager, "bash")
    task = asyncio.create_task(agent.call("bash", {"command": "sleep 30.123"}))
    await asyncio.sleep(0.5)
    assert await _sleepers(agent, "sleep 30.123")  # it runs
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1.0
    deadline = time.monotonic() + 1.0
    while await _sleepers(agent, "sleep 30.123"):
        assert time.monotonic() < deadline, "the command survived its cancelled call"
        await asyncio.sleep(0.05)


async def test_python_keeps_state_and_reports_errors(manager: SandboxManager) -> None:
    agent = await _agent(manager)
    first = await agent.call("python", {"code": "x = 20\nprint('set')"})
    assert first.error is None and first.output == "set\n"
    second = await agent.call("python", {"code": "x * 2 + 2"})
    assert second.error is None and second.output == "42\n"

    boom = await agent.call("python", {"code": "print('before')\n1/0"})
    assert boom.error is not None
    assert boom.error.startswith("before\n")
    assert "ZeroDivisionError" in boom.error and "Traceback" in boom.error
    assert boom.output == boom.error

    plot = await agent.call(
        "python",
        {"code": "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()"},
    )
    assert plot.error is None
    assert "[image/png output: " in plot.output
    assert "iVBOR" not in plot.output and len(plot.output) < 500


async def test_cancelling_python_interrupts_the_cell_and_keeps_state(
    manager: SandboxManager,
) -> None:
    agent = await _agent(manager)
    await agent.call("python", {"code": "kept = 'yes'"})
    task = asyncio.create_task(agent.call("python", {"code": "import time\ntime.sleep(30)"}))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    started = time.monotonic()
    after = await agent.call("python", {"code": "kept"})
    assert time.monotonic() - started < 3  # the kernel is free again: the cell was stopped
    assert after.output == "'yes'\n"


async def test_files_round_trip_with_unicode(manager: SandboxManager) -> None:
    agent = await _agent(manager, "bash")
    text = "naïve café\n日本語 🎉\nlast line\n"
    wrote = await agent.call("write", {"filePath": "dir/ü.txt", "content": text})
    assert wrote.error is None and wrote.metadata["exists"] is False
    shell = await agent.call("bash", {"command": "cat 'dir/ü.txt'"})
    assert shell.output == text

    read = await agent.call("read", {"filePath": "/workspace/dir/ü.txt"})
    assert "1: naïve café\n2: 日本語 🎉\n3: last line\n\n(End of file - total 3 lines)" in (
        read.output
    )
    edited = await agent.call(
        "edit", {"filePath": "dir/ü.txt", "oldString": "日本語 🎉", "newString": "✓ done"}
    )
    assert edited.error is None
    assert (await agent.call("bash", {"command": "cat dir/ü.txt"})).output == (
        "naïve café\n✓ done\nlast line\n"
    )

    listed = await agent.call("list", {"path": "dir"})
    assert listed.output == "/workspace/dir/\n  ü.txt"
    root = await agent.call("list", {})
    assert "  dir/" in root.output.splitlines()

    missing = await agent.call("read", {"filePath": "does-not-exist.txt"})
    assert missing.error == "File not found: /workspace/does-not-exist.txt"
    directory = await agent.call("read", {"filePath": "dir"})
    assert directory.error is not None and "is a directory" in directory.error
    await agent.call(
        "bash", {"command": "head -c 64 /dev/urandom > blob.bin; printf '\\xff' >> blob.bin"}
    )
    binary = await agent.call("read", {"filePath": "blob.bin"})
    assert binary.error == "Cannot read binary file: /workspace/blob.bin"
    outside = await agent.call("read", {"filePath": "/etc/passwd"})
    assert outside.error is not None and "Access denied" in outside.error


async def test_glob_finds_files_newest_first(manager: SandboxManager) -> None:
    agent = await _agent(manager, "bash")
    await agent.call(
        "bash",
        {"command": "mkdir -p a/b && touch a/one.py && sleep 0.05 && touch a/b/two.py x.txt"},
    )
    result = await agent.call("glob", {"pattern": "*.py"})
    assert result.error is None
    assert result.output.splitlines() == ["/workspace/a/b/two.py", "/workspace/a/one.py"]
    scoped = await agent.call("glob", {"pattern": "*.py", "path": "a/b"})
    assert scoped.output == "/workspace/a/b/two.py"
    missing = await agent.call("glob", {"pattern": "*.py", "path": "nowhere"})
    assert missing.error is not None and "/workspace/nowhere" in missing.error
