"""A MemoryBackend sandbox and a ToolContext on it, for the sandbox tools' unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from agentplex.agent.tools import SandboxTools
from agentplex.core.ports import ToolContext, ToolResult
from agentplex.sandbox.memory import MemoryBackend, MemorySandbox

SANDBOX = "sbx-tools"


@dataclass
class Session:
    """One session's view of the tools: its context, the progress it saw, its sandbox."""

    backend: MemoryBackend
    tools: SandboxTools
    timeout: float = 120.0
    progress: list[str] = field(default_factory=list)
    sandbox_requests: int = 0
    bodies: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # runner calls

    async def _sandbox(self) -> str:
        self.sandbox_requests += 1
        if SANDBOX not in self.backend.sandboxes:
            template = self.backend.builtin_templates()[0]
            await self.backend.create(SANDBOX, template, env_vars={}, internet_access=False)
        return SANDBOX

    async def _progress(self, text: str) -> None:
        self.progress.append(text)

    def ctx(self) -> ToolContext:
        return ToolContext(
            env_id="env-1",
            session_id="ses_1",
            message_id="msg_1",
            call_id="call_1",
            sandbox=self._sandbox,
            progress=self._progress,
            timeout=self.timeout,
        )

    async def call(self, name: str, arguments: Any) -> ToolResult:
        return await self.tools.call(self.ctx(), name, arguments)

    @property
    def sandbox(self) -> MemorySandbox:
        return self.backend.sandboxes[SANDBOX]

    def files(self) -> dict[str, str]:
        return {k: v.decode() for k, v in self.sandbox.files.items()}


@pytest.fixture
async def session() -> AsyncIterator[Session]:
    backend = MemoryBackend()
    s = Session(backend, SandboxTools(backend))

    def runner(_sandbox: MemorySandbox, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        s.bodies.append((kind, body))
        return {"stdout": "", "stderr": "", "exit_code": 0}

    backend.runner = runner
    yield s
