"""The execution plane's lower layer: isolated sandboxes, their warm pool and agentd.

Public API: `SandboxManager` (lifecycle), `SandboxHandle` (talk to one sandbox's data plane),
`SandboxState`, `Template`/`Resources`/`builtin_templates`, `IsolationInfo`/`detect_isolation`
and the exceptions in `agentplex.sandbox.errors`.
"""

from __future__ import annotations

from agentplex.sandbox.errors import (
    InvalidTransition,
    IsolationUnavailable,
    SandboxError,
    SandboxNotFound,
    SandboxNotRunning,
    SandboxStartFailed,
    TemplateNotFound,
)
from agentplex.sandbox.handle import SandboxHandle
from agentplex.sandbox.isolation import IsolationInfo, detect_isolation
from agentplex.sandbox.manager import SandboxManager
from agentplex.sandbox.state import SandboxState
from agentplex.sandbox.templates import Resources, Template, builtin_templates

__all__ = [
    "InvalidTransition",
    "IsolationInfo",
    "IsolationUnavailable",
    "Resources",
    "SandboxError",
    "SandboxHandle",
    "SandboxManager",
    "SandboxNotFound",
    "SandboxNotRunning",
    "SandboxStartFailed",
    "SandboxState",
    "Template",
    "TemplateNotFound",
    "builtin_templates",
    "detect_isolation",
]
