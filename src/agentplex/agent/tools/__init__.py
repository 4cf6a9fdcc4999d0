"""The agent's tools (`agentplex.core.ports.ToolSource` adapters): today the sandbox tools;
MCP servers, WASM plugins and skills can add sources of their own."""

from __future__ import annotations

from agentplex.agent.tools.output import MAX_OUTPUT_CHARS
from agentplex.agent.tools.sandbox import SandboxTools

__all__ = ["MAX_OUTPUT_CHARS", "SandboxTools"]
