"""`SandboxTools`: the agent's tools, run in the session's own sandbox.

    tools = SandboxTools(backend)
    tools.specs()                                   # bash, python, read, write, edit, list, glob
    await tools.call(ctx, "bash", {"command": "ls"})  # ToolResult(output, title, metadata, error)

Every tool speaks the Hopx data plane (agentd) through `SandboxBackend.request` and
`.websocket`; the sandbox comes from ``await ctx.sandbox()`` (the session service creates it on
the first call). Nothing the model sends raises: bad arguments, a missing file, a refused path
or an unavailable sandbox all come back as a `ToolResult` with ``error``. Cancelling `call`
stops what it started in the sandbox.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from agentplex.agent.tools import files, shell, specs
from agentplex.agent.tools.arguments import BadArguments
from agentplex.agent.tools.dataplane import SANDBOX_ERRORS, WORKSPACE, DataPlaneError, resolve
from agentplex.core.ports import SandboxBackend, ToolContext, ToolResult, ToolSource, ToolSpec

Tool = Callable[[SandboxBackend, ToolContext, Mapping[str, Any]], Awaitable[ToolResult]]

_TOOLS: dict[str, Tool] = {
    "bash": shell.bash,
    "python": shell.python,
    "read": files.read,
    "write": files.write,
    "edit": files.edit,
    "list": files.list_dir,
    "glob": files.glob,
}


class SandboxTools(ToolSource):
    """The sandbox tools (all of them, or the ones named in ``tools``)."""

    def __init__(self, backend: SandboxBackend, *, tools: Iterable[str] | None = None) -> None:
        self.backend = backend
        chosen = set(_TOOLS) if tools is None else set(tools)
        unknown = chosen - set(_TOOLS)
        if unknown:
            raise ValueError(f"unknown sandbox tools: {sorted(unknown)}; known: {sorted(_TOOLS)}")
        self._specs = tuple(spec for spec in specs.ALL if spec.name in chosen)

    def specs(self) -> tuple[ToolSpec, ...]:
        return self._specs

    async def call(self, ctx: ToolContext, name: str, arguments: Mapping[str, Any]) -> ToolResult:
        tool = _TOOLS.get(name) if any(s.name == name for s in self._specs) else None
        if tool is None:
            offered = ", ".join(s.name for s in self._specs)
            return ToolResult(error=f"Unknown tool '{name}'. The tools are: {offered}.")
        try:
            return await tool(self.backend, ctx, arguments)
        except BadArguments as exc:
            return ToolResult(error=str(exc))
        except DataPlaneError as exc:
            return ToolResult(error=exc.message)
        except SANDBOX_ERRORS as exc:
            return ToolResult(error=f"The sandbox could not do this: {exc.message}")

    def pattern(self, name: str, arguments: Mapping[str, Any]) -> str:
        """The command for ``bash``, the absolute path for the file tools, the glob pattern
        for ``glob``; ``*`` otherwise (and for arguments that are not what they should be)."""
        if not isinstance(arguments, Mapping):
            return "*"
        key = {"bash": "command", "glob": "pattern", "list": "path"}.get(name, "filePath")
        value = arguments.get(key)
        if name == "list" and not value:
            return WORKSPACE
        if not isinstance(value, str) or not value or name == "python":
            return "*"
        return value if name in ("bash", "glob") else resolve(value)
